"""Fresh coupon codes and user ids, so that no two tests touch the same ones,
and the alphabet the service draws generated codes from."""

from __future__ import annotations

import uuid

# Generated codes draw from these characters (no look-alikes 0/O, 1/I).
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"


def new_user() -> str:
    return f"user-{uuid.uuid4()}"


def new_code(prefix: str = "C") -> str:
    """A code no other test uses (codes are unique across every book)."""
    return f"{prefix}{uuid.uuid4().hex[:16].upper()}"
