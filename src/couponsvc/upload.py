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


def read_codes(path: Path) -> Iterator[str]:
    with path.open(newline="") as handle:
        if path.suffix.lower() == ".csv":
            for row in csv.reader(handle):
                if row and row[0].strip() and row[0].strip().lower() != "code":
                    yield row[0].strip()
        else:
            for line in handle:
                if line.strip():
                    yield line.strip()


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
    total_lines = sum(1 for _ in read_codes(path))
    totals = Totals()
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
    with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
        for chunk in chunks(read_codes(path), chunk_size):
            response = client.post("/coupons/codes", params={"couponBookId": book_id},
                                   content="\n".join(chunk).encode())
            if response.status_code != 200:
                raise SystemExit(f"\nupload failed after {totals.sent} codes: "
                                 f"{response.status_code} {response.text}")
            totals.add(_decode_result(response.content), len(chunk))
            _progress(out, totals.sent, total_lines, time.monotonic() - started)
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
