"""HTTP edges: bounded body reading, typed decoding, JSON responses, headers."""

from __future__ import annotations

import hashlib
import re
from typing import Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from couponsvc.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

T = TypeVar("T")

SMALL_BODY_BYTES = 64 * 1024
IDEMPOTENCY_HEADER = b"idempotency-key"
# Headers whose one value decides the request: sent twice, they are refused.
_SINGLE_HEADERS = frozenset({b"authorization", b"content-type", IDEMPOTENCY_HEADER})
_HEADER_INDEX = "couponsvc.headers"  # where `header` keeps its index in the scope
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# US-ASCII text is UTF-8 too.
_UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii"})
_FIELD_AT = re.compile(r"at `\$\.?([^`]*)`")
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]*)`")

_GOT_FLOAT = "got `float`"
# A \uD800-\uDBFF escape not followed by its low half: msgspec reports it as
# "Input data was truncated", which would send a client looking elsewhere.
# (An even run of backslashes before it is escaped backslashes, not an escape.)
_LONE_HIGH_SURROGATE = re.compile(
    rb"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])")

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_untyped = msgspec.json.Decoder()


class JsonResponse(Response):
    """A JSON body already encoded, with its two headers written directly
    (Starlette's `init_headers` looks at every header it is given, per request)."""

    media_type = "application/json"

    def __init__(self, content: bytes, status_code: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.body = content
        self.background = None
        self.raw_headers = [(b"content-length", str(len(content)).encode()),
                            (b"content-type", b"application/json")]
        if headers:
            self.raw_headers += [(name.lower().encode("latin-1"), value.encode("latin-1"))
                                 for name, value in headers.items()]


def json_response(body: object, status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    return JsonResponse(_encoder.encode(body), status, headers)


def header(request: Request, name: bytes) -> str | None:
    """A request header by its lower-case name. The headers are indexed once
    per request (Starlette's `Headers.get` scans them all on every call, and
    the hot path asks for four). A header this service reads once may be sent
    only once: which of two tokens, keys or media types counts would be a
    guess (400); of other headers the first counts."""
    scope = request.scope
    index: dict[bytes, bytes] | None = scope.get(_HEADER_INDEX)
    if index is None:
        index = {}
        for key, value in scope["headers"]:  # ASGI servers send names in lower case
            if key in index:
                if key in _SINGLE_HEADERS:
                    field = key.decode("latin-1").title()
                    raise InvalidRequest(f"send the {field} header once", field=field)
                continue
            index[key] = value
        scope[_HEADER_INDEX] = index
    value = index.get(name)
    return None if value is None else value.decode("latin-1")


async def read_body(request: Request, limit: int = SMALL_BODY_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes.
    Read from the ASGI messages directly: a small body is one message."""
    declared = header(request, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body may be at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body may be at most {limit} bytes")
        if not more and not chunks:
            return chunk
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    """The body's media type, lower case; 415 for a charset other than UTF-8
    (bodies are read as UTF-8: one in UTF-16 or Latin-1 would otherwise be
    refused as malformed, or its codes read wrongly)."""
    media = header(request, b"content-type")
    if media is None:
        return "application/json"
    kind, _, parameters = media.partition(";")
    if parameters:
        _check_charset(parameters)
    return kind.strip().lower()


def _check_charset(parameters: str) -> None:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() != "charset":
            continue
        charset = value.strip().strip('"').lower()
        if charset not in _UTF8_CHARSETS:
            raise UnsupportedMediaType(f"send the body in UTF-8, not charset={charset}")


def is_text(request: Request) -> bool:
    return _media_type(request) == "text/plain"


def _check_json(request: Request) -> None:
    media = _media_type(request)
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(f"send JSON (Content-Type: application/json), not {media}")


def decode(body: bytes, kind: type[T]) -> T:
    """Decodes and validates a JSON body; errors name the offending field."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        try:
            value: T = decoder.decode(body)
        except msgspec.ValidationError as exc:
            if _GOT_FLOAT not in str(exc):
                raise
            value = _decode_whole_floats(body, kind, exc)
        return value
    except msgspec.ValidationError as exc:
        message = str(exc)
        named = _NAMED_FIELD.search(message)
        where = _FIELD_AT.search(message)
        field = where.group(1) if where else None
        if named:  # the path is of the object holding the field
            field = f"{field}.{named.group(1)}" if field else named.group(1)
        raise InvalidRequest(message, field=field or None) from None
    except msgspec.DecodeError as exc:
        reason = "an unpaired \\uD800-\\uDBFF escape" \
            if _LONE_HIGH_SURROGATE.search(body) else str(exc)
        raise InvalidRequest(f"the body is not valid JSON: {reason}") from None
    except UnicodeDecodeError:  # bytes that are not UTF-8 inside a string
        raise InvalidRequest("the body is not valid JSON: it is not UTF-8") from None


def _decode_whole_floats(body: bytes, kind: type[T], error: msgspec.ValidationError) -> T:
    """JSON has one kind of number: 300.0 is the integer 300 to JSON Schema, and
    so to the OpenAPI document. A body the typed decoder refused for a float
    is decoded again untyped, whole floats made ints, and converted (only this
    rare body pays for the second decode)."""
    try:
        value: T = msgspec.convert(_whole_numbers(_untyped.decode(body)), kind)
    except RecursionError:  # nested deeper than the typed decoder ever looked
        raise error from None
    return value


def _whole_numbers(value: Any) -> Any:
    """The decoded JSON with every float that has no fraction made an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    if isinstance(value, dict):
        return {name: _whole_numbers(item) for name, item in value.items()}
    return value


async def json_body(request: Request, kind: type[T], limit: int = SMALL_BODY_BYTES) -> T:
    """The body, decoded and validated."""
    _check_json(request)
    return decode(await read_body(request, limit), kind)


def fingerprint(method: str, path: str, decoded: msgspec.Struct) -> str:
    """What an Idempotency-Key is bound to: the method, the path and the body
    as decoded, encoded again. The same request sent with other spacing, field
    order or a default spelled out is the same request."""
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(msgspec.json.encode(decoded))
    return digest.hexdigest()


def idempotency_key(request: Request) -> str | None:
    key = header(request, IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidRequest("Idempotency-Key must be 1-255 visible ASCII characters",
                             field="Idempotency-Key")
    return key


def query(request: Request, name: str) -> str | None:
    """A query parameter, which may be given once (as a header that decides
    the request: of two values, which counts would be a guess)."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"give {name} once", field=name)
    return values[0] if values else None


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = query(request, name)
    if raw is None:
        return default
    # Checked by length first: int() refuses strings over 4300 digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20 or not low <= int(raw) <= high:
        raise InvalidRequest(f"{name} must be an integer from {low} to {high}", field=name)
    return int(raw)
