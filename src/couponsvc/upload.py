"""`couponsvc upload`: streams a file of codes to a running service in chunks.

The file holds one code per line, or CSV whose first column is the code (a
header row named `code` is skipped). Each chunk is one text/plain request, so
a file of millions of codes never has to fit in one body or in memory.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx
import msgspec

from couponsvc.schemas import UploadResult

_decode_result = msgspec.json.Decoder(UploadResult).decode


@dataclass
class Totals:
    sent: int = 0
    added: int = 0
    refused: dict[str, int] = field(
        default_factory=lambda: {"duplicates": 0, "inOtherBook": 0, "invalid": 0})

    def add(self, result: UploadResult, sent: int) -> None:
        self.sent += sent
        self.added += result.added
        self.refused["duplicates"] += len(result.refused.duplicates)
        self.refused["inOtherBook"] += len(result.refused.inOtherBook)
        self.refused["invalid"] += len(result.refused.invalid)


class UploadError(Exception):
    """What stops an upload, in one line for the operator."""


def read_codes(path: Path) -> Iterator[str]:
    """The file's codes. UTF-8 (a byte-order mark is skipped); a CSV is read
    strictly, its first row skipped when its first column is `code` (a
    header), and a code may not hold a line break (it would reach the
    service as two codes, one per line)."""
    reader = None
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            if path.suffix.lower() == ".csv":
                reader = csv.reader(handle, strict=True)
                for row in reader:
                    code = row[0].strip() if row else ""
                    if _splits(code):
                        raise UploadError(f"{path}, line {reader.line_num}: a code holds a "
                                          "line break")
                    if code and not (reader.line_num == 1 and code.lower() == "code"):
                        yield code
            else:
                for number, line in enumerate(handle, 1):
                    if (code := line.strip()) and _splits(code):
                        raise UploadError(f"{path}, line {number}: a code holds a line "
                                          "break")
                    if code:
                        yield code
    except csv.Error as exc:
        where = f", line {reader.line_num}" if reader is not None else ""
        raise UploadError(f"{path}{where}: not valid CSV: {exc}") from None
    except UnicodeDecodeError:
        raise UploadError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise UploadError(f"cannot read {path}: {exc.strerror or exc}") from None


def _splits(code: str) -> bool:
    """True for a code the service would read as several: it splits a text
    body into lines as str.splitlines does (form feeds, U+2028 and more)."""
    return len(code.splitlines()) > 1


def chunks(codes: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for code in codes:
        chunk.append(code)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def upload(url: str, token: str, book_id: str, path: Path, chunk_size: int,
           out: TextIO = sys.stderr) -> Totals:
    """Sends the file's codes; raises UploadError with what stopped it."""
    if not path.exists():
        raise UploadError(f"{path}: no such file")
    if not path.is_file():
        # A pipe or a device cannot be read twice (once to count, once to send).
        raise UploadError(f"{path}: not a regular file")
    if not token.isascii() or not token.isprintable():
        raise UploadError("the token must be printable ASCII")
    total_lines = sum(1 for _ in read_codes(path))
    totals = Totals()
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
    # Patient with a large chunk being made durable; quick to say a server is not there.
    timeout = httpx.Timeout(300, connect=10)
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
            for chunk in chunks(read_codes(path), chunk_size):
                response = client.post("/coupons/codes", params={"couponBookId": book_id},
                                       content="\n".join(chunk).encode())
                if response.status_code != 200:
                    raise UploadError(f"upload failed after {totals.sent} codes: "
                                      f"{response.status_code} {response.text[:300]}")
                totals.add(_decode_result(response.content), len(chunk))
                _progress(out, totals.sent, total_lines, time.monotonic() - started)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise UploadError(f"upload failed after {totals.sent} codes: {url}: {exc}") from None
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise UploadError(f"upload failed after {totals.sent} codes: {url} did not answer "
                          "like the coupon service") from None
    finally:
        out.write("\n")
    return totals


def _progress(out: TextIO, done: int, total: int, seconds: float) -> None:
    # A one-line bar on stderr; small enough not to need a library.
    width = 30
    filled = width * done // max(total, 1)
    rate = done / seconds if seconds else 0.0
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} codes, "
              f"{rate:,.0f}/s")
    out.flush()


def summary(totals: Totals) -> str:
    refused = totals.refused
    return (f"sent {totals.sent}, added {totals.added}, refused "
            f"{sum(refused.values())} (duplicates {refused['duplicates']}, "
            f"in another book {refused['inOtherBook']}, invalid {refused['invalid']})")
