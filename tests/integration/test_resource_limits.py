"""Resource limits on a real server: request deadlines (serving.py), body
size, codes per upload. Each answer is a problem document or a closed
connection, never a hang or a 500.

The API here has short deadlines and small limits of its own; raw sockets
play the slow clients that httpx would not.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from .api_client import Api, http_client
from .names import new_code, new_user
from .problems import assert_problem
from .servers import Stack, running_stack
from .tokens import bearer

pytestmark = pytest.mark.integration

HEAD_SECONDS = 1.0
BODY_SECONDS = 1.0
KEEP_ALIVE_SECONDS = 2
MAX_UPLOAD_CODES = 5
MAX_BODY_BYTES = 4096
IDEMPOTENCY_TTL_SECONDS = 600
# A broken deadline must show long before this; it only stops a hang.
SOCKET_TIMEOUT_SECONDS = 15.0


@pytest.fixture(scope="module")
def limited_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("limits"),
                       COUPONSVC_HEADER_TIMEOUT_SECONDS=str(HEAD_SECONDS),
                       COUPONSVC_BODY_TIMEOUT_SECONDS=str(BODY_SECONDS),
                       COUPONSVC_KEEP_ALIVE_SECONDS=str(KEEP_ALIVE_SECONDS),
                       COUPONSVC_MAX_UPLOAD_CODES=str(MAX_UPLOAD_CODES),
                       COUPONSVC_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
                       COUPONSVC_IDEMPOTENCY_TTL_SECONDS=str(IDEMPOTENCY_TTL_SECONDS)) as stack:
        yield stack


@pytest.fixture
async def api(limited_stack: Stack) -> AsyncIterator[Api]:
    async with http_client(limited_stack.api.base_url) as client:
        yield Api(client, limited_stack.api)


def connect(stack: Stack) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.api.port))
    sock.settimeout(SOCKET_TIMEOUT_SECONDS)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def assert_timed_out(raw: bytes) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), raw
    assert b"content-type: application/problem+json" in head.lower(), raw
    response = httpx.Response(408, headers={"content-type": "application/problem+json"},
                              content=body)
    assert_problem(response, 408, "request-timeout")


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
        limited_stack: Stack) -> None:
    """As an idle kept-alive connection is: no request began, nobody to answer."""
    with connect(limited_stack) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
    assert time.monotonic() - started >= HEAD_SECONDS * 0.9


def test_headers_sent_a_byte_at_a_time_are_cut_off(limited_stack: Stack) -> None:
    """Slowloris: each byte resets no timer; the head as a whole has a deadline."""
    request = b"POST /coupons/assign HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200
    with connect(limited_stack) as sock:
        try:
            for byte in request:
                sock.send(bytes([byte]))
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed mid-dribble: the deadline worked
        assert_timed_out(read_until_closed(sock))


def test_a_body_that_stalls_is_cut_off(limited_stack: Stack) -> None:
    token = limited_stack.api.writer
    head = (f"POST /coupons/assign HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()
    with connect(limited_stack) as sock:
        sock.sendall(head + b'{"userId": "slow"')
        assert_timed_out(read_until_closed(sock))
    assert "unhandled error" not in limited_stack.api.log()


def problem_of(raw: bytes, status: int, slug: str) -> None:
    """A whole response, written below the app, that closed the connection."""
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), raw
    assert b"content-type: application/problem+json" in head.lower(), raw
    assert b"connection: close" in head.lower(), raw
    response = httpx.Response(status, headers={"content-type": "application/problem+json"},
                              content=body)
    assert_problem(response, status, slug)


@pytest.mark.parametrize("request_bytes", [
    b"GET /users/\xffal\x00ice/coupons HTTP/1.1\r\nHost: x\r\n\r\n",  # bytes no path holds
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Note: a\x00b\r\n\r\n",  # NUL in a header
    b"POST /coupons HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",  # bad framing
    b"BREW /coupons HTTP/1.1\r\nHost: x\r\n\r\n",  # no such method
])
def test_a_request_the_http_parser_refuses_is_a_400_problem(
        limited_stack: Stack, request_bytes: bytes) -> None:
    """uvicorn answers these itself, before the app: text/plain unless told."""
    with connect(limited_stack) as sock:
        sock.sendall(request_bytes)
        problem_of(read_until_closed(sock), 400, "invalid-request")


def test_a_request_head_over_64_kib_is_a_431_problem(limited_stack: Stack) -> None:
    """httptools sets no limit: without one, megabytes of headers are read
    (and a token cache keyed on them would keep them)."""
    padding = b"X-Padding: " + b"a" * 8000 + b"\r\n"
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + padding * 9 + b"\r\n"
    with connect(limited_stack) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the rest was read
        problem_of(read_until_closed(sock), 431, "request-header-too-large")
    with connect(limited_stack) as sock:  # just under the limit is served
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     + padding * 7 + b"\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")


def test_one_endless_header_line_is_a_431_at_once(limited_stack: Stack) -> None:
    """httptools hands a header over only when its line ends: the limit is
    counted as bytes arrive, not per header (else one line is read until the
    head deadline, copied whole on every read)."""
    with connect(limited_stack) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        started = time.monotonic()
        try:
            for _ in range(40):
                sock.sendall(b"a" * 4096)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the rest was read
        problem_of(read_until_closed(sock), 431, "request-header-too-large")
    assert time.monotonic() - started < HEAD_SECONDS  # not the head deadline's 408


def test_a_refused_request_is_answered_after_the_one_before_it(limited_stack: Stack) -> None:
    """Pipelined: the answer to the first request comes first, then the
    refusal of the second, then the connection closes."""
    with connect(limited_stack) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"BREW /coupons HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = read_until_closed(sock)
    first, _, rest = raw.partition(b"HTTP/1.1 400 ")
    assert first.startswith(b"HTTP/1.1 200 ") and b"\"redis\":\"ok\"" in first, raw
    problem_of(b"HTTP/1.1 400 " + rest, 400, "invalid-request")


def test_a_client_that_hangs_up_on_pipelined_requests_leaves_no_error_in_the_log(
        limited_stack: Stack) -> None:
    """Requests queued behind one that waits on Redis: uvicorn marked only the
    last one read as disconnected, and the first was answered into a closed
    socket (a traceback per connection)."""
    logged_before = len(limited_stack.api.log())
    counted_before = requests_counted(limited_stack, "GET", "/readyz")
    connections = 5
    for _ in range(connections):
        with connect(limited_stack) as sock:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    hung_up = time.monotonic()

    # The second request of each connection is the one at stake: it starts the
    # moment the first is answered (before the client can have read that
    # answer and hung up), so it is always run, and counted once it is done,
    # whatever it met. Only then may the log be read. (The third starts only
    # if the second was answered before the hang-up, so it may not run; one
    # that does is the request uvicorn itself marks disconnected.)
    while requests_counted(limited_stack, "GET", "/readyz") < counted_before + 2 * connections:
        assert time.monotonic() - hung_up < SOCKET_TIMEOUT_SECONDS, \
            "the API never finished the requests the clients hung up on"
        time.sleep(0.05)
    with connect(limited_stack) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")
    logged = limited_stack.api.log()[logged_before:]
    for marker in ("unhandled error", "Traceback", "Exception in ASGI application"):
        assert marker not in logged, logged


def requests_counted(stack: Stack, method: str, route: str) -> float:
    """The API's request counter for one route, summed over statuses."""
    scrape = httpx.get(f"{stack.api.base_url}/metrics", timeout=SOCKET_TIMEOUT_SECONDS)
    return sum(sample.value
               for family in text_string_to_metric_families(scrape.text)
               for sample in family.samples
               if sample.name == "couponsvc_http_requests_total"
               and sample.labels["method"] == method and sample.labels["route"] == route)


def test_a_client_that_hangs_up_mid_body_leaves_no_error_in_the_log(
        limited_stack: Stack) -> None:
    """A client gone before its body arrived is not the service's error: no
    "unhandled error" or traceback for an operator to chase."""
    token = limited_stack.api.writer
    head = (f"POST /coupons/assign HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()
    logged_before = len(limited_stack.api.log())
    counted_before = requests_counted(limited_stack, "POST", "/coupons/assign")

    with connect(limited_stack) as sock:
        sock.sendall(head + b'{"userId":')  # 10 of the 100 bytes, then hang up
    hung_up = time.monotonic()

    while requests_counted(limited_stack, "POST", "/coupons/assign") == counted_before:
        assert time.monotonic() - hung_up < SOCKET_TIMEOUT_SECONDS, \
            "the API never finished the abandoned request"
        time.sleep(0.05)
    # Ended by the hang-up itself, not by the body deadline (the stalled-body test's case).
    assert time.monotonic() - hung_up < BODY_SECONDS
    logged = limited_stack.api.log()[logged_before:]
    for marker in ("unhandled error", "Traceback", "Exception in ASGI application"):
        assert marker not in logged, logged


async def test_the_server_keeps_serving_after_cutting_off_slow_clients(
        limited_stack: Stack, api: Api) -> None:
    slow = [connect(limited_stack) for _ in range(20)]
    try:
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        response = await api.client.get("/healthz")
        assert response.status_code == 200
        for sock in slow:
            assert_timed_out(read_until_closed(sock))
    finally:
        for sock in slow:
            sock.close()
    assert (await api.client.get("/healthz")).status_code == 200


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response's head and body (by its Content-Length), leaving the
    connection open."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed in the body after {body!r}"
        body += chunk
    return head, body


def test_a_kept_alive_connection_serves_requests_apart_in_time(limited_stack: Stack) -> None:
    """The deadlines belong to a request, not to the connection: between
    requests only the keep-alive timeout applies. Three requests on one
    connection, each pause longer than the head and body deadlines but within
    keep-alive, all answered on it."""
    pause = (max(HEAD_SECONDS, BODY_SECONDS) + KEEP_ALIVE_SECONDS) / 2
    with connect(limited_stack) as sock:
        for attempt in range(3):
            if attempt:
                time.sleep(pause)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = read_response(sock)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert b'"status"' in body, body


async def test_a_chunked_body_over_the_limit_is_413(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 1000 + 2):
            yield b'"' + b"C" * 998 + b'",'

    response = await api.client.post(
        "/coupons/codes", content=chunks(),
        headers={**bearer(api.server.admin), "Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload-too-large")


async def test_more_codes_than_allowed_in_one_upload_is_400_and_adds_nothing(api: Api) -> None:
    book = await api.create_book()
    codes = [new_code() for _ in range(MAX_UPLOAD_CODES + 1)]
    response = await api.post("/coupons/codes", {"couponBookId": book["id"], "codes": codes},
                              token=api.server.admin)
    assert_problem(response, 400, "invalid-request")
    view = (await api.get(f"/coupons/{book['id']}")).json()
    assert view["counts"]["total"] == 0
    accepted = await api.post("/coupons/codes",
                              {"couponBookId": book["id"], "codes": codes[:MAX_UPLOAD_CODES]},
                              token=api.server.admin)
    assert accepted.status_code == 200, accepted.text


async def test_generating_more_codes_than_allowed_is_400(api: Api) -> None:
    book = await api.create_book()
    response = await api.post(
        "/coupons/codes",
        {"couponBookId": book["id"],
         "generate": {"pattern": "GEN-########", "count": MAX_UPLOAD_CODES + 1}},
        token=api.server.admin)
    problem = assert_problem(response, 400, "invalid-request")
    assert str(MAX_UPLOAD_CODES) in problem["detail"]


async def test_idempotency_keys_are_kept_for_the_configured_window(
        api: Api, limited_stack: Stack) -> None:
    """Each keyed request holds Redis memory for the window: operators size it."""
    book, _ = await api.book_with_codes(1)
    response = await api.assign(book["id"], new_user(), headers={"Idempotency-Key": "w-1"})
    assert response.status_code == 200, response.text

    redis = Redis.from_url(limited_stack.redis.url)
    try:
        keys = [key async for key in redis.scan_iter("cb:*idem*")]
        ttls = [await redis.pttl(key) for key in keys]
    finally:
        await redis.aclose()
    assert len(keys) == 2  # the key's binding and the stored answer
    assert all((IDEMPOTENCY_TTL_SECONDS - 60) * 1000 < ttl <= IDEMPOTENCY_TTL_SECONDS * 1000
               for ttl in ttls), ttls
