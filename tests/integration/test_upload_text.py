"""Uploading codes as text/plain, and `couponsvc upload` streaming a file."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from .api_client import Api
from .names import new_code
from .problems import assert_problem
from .redis_state import book_keys
from .servers import PROJECT_ROOT, ApiServer

pytestmark = pytest.mark.integration


async def test_a_text_body_adds_one_code_per_line(api: Api, redis: Redis) -> None:
    book, [existing] = await api.book_with_codes(1)
    fresh = [new_code() for _ in range(3)]
    body = "\n".join([fresh[0], f"  {fresh[1]}  ", "", existing, "bad code!", fresh[2]])

    response = await api.client.post(
        "/coupons/codes", params={"couponBookId": book["id"]}, content=body.encode(),
        headers={"Authorization": f"Bearer {api.server.admin}", "Content-Type": "text/plain"})

    assert response.status_code == 200, response.text
    result = response.json()
    assert result["added"] == 3
    assert result["refused"] == {"duplicates": [existing], "inOtherBook": [],
                                 "invalid": ["bad code!"]}
    keys = await book_keys(redis, book["id"])
    assert await redis.smembers(f"{keys}:free") == {existing, *fresh}


async def test_a_text_body_is_read_in_utf8_only(api: Api, redis: Redis) -> None:
    book, _ = await api.book_with_codes(1)
    code = new_code()
    headers = {"Authorization": f"Bearer {api.server.admin}"}

    latin1 = await api.client.post(
        "/coupons/codes", params={"couponBookId": book["id"]}, content=code.encode("latin-1"),
        headers={**headers, "Content-Type": "text/plain; charset=ISO-8859-1"})
    utf8 = await api.client.post(
        "/coupons/codes", params={"couponBookId": book["id"]}, content=code.encode(),
        headers={**headers, "Content-Type": "text/plain;charset=utf-8"})

    problem = assert_problem(latin1, 415, "unsupported-media-type")
    assert problem["detail"] == "send the body in UTF-8, not charset=iso-8859-1"
    assert utf8.status_code == 200, utf8.text
    assert utf8.json()["added"] == 1
    assert code in await redis.smembers(f"{await book_keys(redis, book['id'])}:free")


@pytest.mark.parametrize(("params", "says"), [
    ({}, "needs ?couponBookId=<book id>"),
    ({"couponBookId": ""}, "needs ?couponBookId=<book id>"),
    ({"couponBookId": "not-a-book"}, "'not-a-book' is not a book id"),
])
async def test_a_text_body_needs_the_book_in_the_query(
        api: Api, params: dict[str, str], says: str) -> None:
    response = await api.client.post(
        "/coupons/codes", params=params, content=b"ABC\n",
        headers={"Authorization": f"Bearer {api.server.admin}", "Content-Type": "text/plain"})

    problem = assert_problem(response, 400, "invalid-request")
    assert problem["field"] == "couponBookId"
    assert says in problem["detail"]


async def test_a_text_body_that_is_not_utf8_is_400(api: Api, redis: Redis) -> None:
    book, [existing] = await api.book_with_codes(1)
    before = (await api.get(f"/coupons/{book['id']}")).json()
    # A valid line first: the whole body is refused, not decoded up to the bad bytes.
    fresh = new_code()
    response = await api.client.post(
        "/coupons/codes", params={"couponBookId": book["id"]},
        content=f"{fresh}\n".encode() + b"\xff\xfe\n",
        headers={"Authorization": f"Bearer {api.server.admin}", "Content-Type": "text/plain"})

    problem = assert_problem(response, 400, "invalid-request")
    assert problem["field"] == "codes"
    assert (await api.get(f"/coupons/{book['id']}")).json() == before
    keys = await book_keys(redis, book["id"])
    assert await redis.smembers(f"{keys}:free") == {existing}


def _run_upload(api_server: ApiServer, book_id: str, path: Path, token: str,
                *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "couponsvc", "upload", str(path), "--book", book_id,
         "--url", api_server.base_url, "--chunk", "7", *extra],
        capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "COUPONSVC_TOKEN": token},
    )


@pytest.mark.parametrize("suffix", [".txt", ".csv"])
async def test_the_upload_command_streams_a_file_in_chunks(
    api: Api, redis: Redis, tmp_path: Path, suffix: str
) -> None:
    book, [existing] = await api.book_with_codes(1)
    fresh = [new_code() for _ in range(20)]
    path = tmp_path / f"codes{suffix}"
    if suffix == ".csv":
        rows = ["code,note", *(f"{c},x" for c in [*fresh, existing]), "bad code!,y"]
    else:
        rows = [*fresh, existing, "bad code!"]
    path.write_text("\n".join(rows) + "\n")

    done = _run_upload(api.server, book["id"], path, api.server.admin)

    assert done.returncode == 0, done.stderr
    assert "added 20, refused 2 (duplicates 1, in another book 0, invalid 1)" in done.stdout
    assert "22/22 codes" in done.stderr  # the progress bar reached the end
    keys = await book_keys(redis, book["id"])
    assert await redis.smembers(f"{keys}:free") == {existing, *fresh}


async def test_the_upload_command_fails_loudly_without_admin_rights(
    api: Api, tmp_path: Path
) -> None:
    book, _ = await api.book_with_codes(1)
    path = tmp_path / "codes.txt"
    path.write_text(new_code() + "\n")

    done = _run_upload(api.server, book["id"], path, api.server.writer)

    assert done.returncode != 0
    assert "403" in done.stderr


def _one_line_error(done: subprocess.CompletedProcess[str], says: str) -> None:
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    assert says in done.stderr, done.stderr


async def test_the_upload_command_refuses_what_it_cannot_send_whole(
        api: Api, tmp_path: Path) -> None:
    """Each a one-line error and nothing sent, where it used to send nothing
    and say so (a pipe: read once to count, then empty) or to end in a
    traceback (the others)."""
    book, _ = await api.book_with_codes(1)
    newline_in_code = tmp_path / "split.csv"
    newline_in_code.write_text('code\n"EMB-A1\nEMB-B1",x\n')
    unterminated = tmp_path / "open.csv"
    unterminated.write_text('code\n"OPEN-1,x\nOPEN-2,y\n')
    latin1 = tmp_path / "latin.txt"
    latin1.write_bytes(b"CAF\xc9-1\n")
    # The service splits a text body into lines as str.splitlines does, not only on '\n'.
    form_feed = tmp_path / "ff.csv"
    form_feed.write_text('code\n"ABC\x0cDEF",x\n')
    spaced_line = tmp_path / "spaced.txt"
    spaced_line.write_text("ABC\u2028DEF\n")
    cases = {
        "/dev/stdin": "not a regular file",
        str(tmp_path): "not a regular file",
        str(tmp_path / "missing.txt"): "no such file",
        str(newline_in_code): "line 3: a code holds a line break",
        str(form_feed): "line 2: a code holds a line break",
        str(spaced_line): "line 1: a code holds a line break",
        str(unterminated): "line 3: not valid CSV",
        str(latin1): "not UTF-8 text",
    }
    for path, says in cases.items():
        _one_line_error(_run_upload(api.server, book["id"], Path(path), api.server.admin), says)

    assert (await api.get(f"/coupons/{book['id']}")).json()["counts"]["total"] == 1


async def test_the_upload_command_reads_past_a_byte_order_mark(
        api: Api, redis: Redis, tmp_path: Path) -> None:
    book, _ = await api.book_with_codes(0)
    codes = [new_code(), new_code()]
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffcode,note\n".encode() + "".join(f"{c},x\n" for c in codes).encode())

    done = _run_upload(api.server, book["id"], path, api.server.admin)

    assert done.returncode == 0, done.stderr
    assert "added 2, refused 0" in done.stdout
    keys = await book_keys(redis, book["id"])
    assert await redis.smembers(f"{keys}:free") == set(codes)


async def test_the_upload_command_says_which_server_it_could_not_reach(
        api: Api, tmp_path: Path) -> None:
    path = tmp_path / "codes.txt"
    path.write_text(new_code() + "\n")
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]

    done = subprocess.run(
        [sys.executable, "-m", "couponsvc", "upload", str(path), "--book", str(uuid.uuid4()),
         "--url", f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "COUPONSVC_TOKEN": api.server.admin})

    _one_line_error(done, f"upload failed after 0 codes: http://127.0.0.1:{port}")


async def test_the_upload_command_finds_the_local_service_from_its_settings(
        api: Api, redis: Redis, tmp_path: Path) -> None:
    """Without --url: where `couponsvc serve` with the same environment listens."""
    book, _ = await api.book_with_codes(0)
    code = new_code()
    path = tmp_path / "codes.txt"
    path.write_text(code + "\n")

    done = subprocess.run(
        [sys.executable, "-m", "couponsvc", "upload", str(path), "--book", book["id"]],
        capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "COUPONSVC_TOKEN": api.server.admin,
             "COUPONSVC_HOST": "0.0.0.0", "COUPONSVC_PORT": str(api.server.port)})

    assert done.returncode == 0, done.stderr
    assert "added 1, refused 0" in done.stdout
    keys = await book_keys(redis, book["id"])
    assert await redis.smembers(f"{keys}:free") == {code}
