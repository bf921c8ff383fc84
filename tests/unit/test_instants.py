"""Instants to and from Redis's whole milliseconds, exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from couponsvc.instants import EPOCH, datetime_to_ms, ms_to_datetime

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("moment", [
    EPOCH,
    datetime(2026, 11, 24, 20, 0, 0, 1_000, tzinfo=UTC),
    # int(t.timestamp() * 1000) gives 1 ms less for this one (about 0.6% of the
    # instants from 1970 to 2100 are like it)
    datetime(2038, 2, 4, 21, 32, 50, 140_000, tzinfo=UTC),
    datetime(9998, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),
])
def test_a_millisecond_instant_survives_the_round_trip(moment: datetime) -> None:
    assert ms_to_datetime(datetime_to_ms(moment)) == moment
    assert ms_to_datetime(str(datetime_to_ms(moment))) == moment


def test_float_arithmetic_would_lose_a_millisecond_here() -> None:
    """Why the module exists: the old arithmetic, on the instant above."""
    moment = datetime(2038, 2, 4, 21, 32, 50, 140_000, tzinfo=UTC)
    assert int(moment.timestamp() * 1000) == datetime_to_ms(moment) - 1


def test_microseconds_round_down_and_offsets_count() -> None:
    assert datetime_to_ms(EPOCH + timedelta(microseconds=1_999)) == 1
    # 02:00 at UTC+02:00 is the epoch itself; 02:00 UTC is two hours after it.
    assert datetime_to_ms(datetime(1970, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))) == 0
    assert datetime_to_ms(datetime(1970, 1, 1, 2, tzinfo=UTC)) == 2 * 3600 * 1000
    assert ms_to_datetime(0) == EPOCH
