"""Instants as Redis keeps them: whole milliseconds since the Unix epoch.

Both conversions use integer arithmetic. Float timestamps would put about one
instant in 160 a millisecond early (`int(t.timestamp() * 1000)`), and drift
by microseconds past the year 2242 (`datetime.fromtimestamp(ms / 1000)`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def datetime_to_ms(moment: datetime) -> int:
    """Whole milliseconds since the epoch, rounded down (Redis keeps no finer)."""
    return (moment - EPOCH) // _MILLISECOND


def ms_to_datetime(ms: int | str) -> datetime:
    return EPOCH + timedelta(milliseconds=int(ms))
