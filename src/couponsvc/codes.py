"""Coupon code rules: what a valid code is, and generating codes from a pattern."""

from __future__ import annotations

import re
import secrets

from couponsvc.errors import InvalidRequest

VALID_CODE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Upper-case letters and digits without the look-alikes 0/O and 1/I.
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
PLACEHOLDER = "#"
DEFAULT_PATTERN = PLACEHOLDER * 12
# A pattern must offer this many times more codes than asked for, so that
# handed-out codes cannot be guessed from the pattern.
MIN_KEYSPACE_RATIO = 100


def is_valid_code(code: object) -> bool:
    return isinstance(code, str) and VALID_CODE.fullmatch(code) is not None


def check_pattern(pattern: str, count: int, field: str) -> None:
    """400 unless the pattern can give `count` hard-to-guess codes."""
    slots = pattern.count(PLACEHOLDER)
    if slots == 0:
        raise InvalidRequest(f"{field} needs at least one '#' placeholder", field=field)
    keyspace = len(ALPHABET) ** slots
    if keyspace < MIN_KEYSPACE_RATIO * count:
        raise InvalidRequest(
            f"{field} {pattern!r} gives {keyspace} codes; {count} codes need at least "
            f"{MIN_KEYSPACE_RATIO * count} (add '#' placeholders)",
            field=field,
        )


# 256 is a multiple of 32, so mapping each random byte onto the alphabet by
# its low five bits keeps every character equally likely.
_BYTE_TO_CHAR = bytes(ord(ALPHABET[b % len(ALPHABET)]) for b in range(256))


def generate(pattern: str, count: int) -> list[str]:
    """`count` distinct random codes following `pattern` (collisions redrawn)."""
    parts = pattern.split(PLACEHOLDER)
    slots = len(parts) - 1
    out: set[str] = set()
    while len(out) < count:
        need = count - len(out)
        chars = secrets.token_bytes(need * slots).translate(_BYTE_TO_CHAR).decode()
        for start in range(0, need * slots, slots):
            draw = chars[start:start + slots]
            out.add("".join(p + c for p, c in zip(parts, draw, strict=False)) + parts[-1])
    return list(out)
