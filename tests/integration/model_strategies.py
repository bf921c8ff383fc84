"""What the state machine's rules draw: mostly the requests of a working
checkout, with the mistakes and abuses mixed in at a lower rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

T = TypeVar("T")


def weighted(*choices: tuple[int, T]) -> st.SearchStrategy[T]:
    """One of the values, as often as its weight says (hypothesis's own
    sampled_from favours the first and last elements); shrinks to the first."""
    values = [value for weight, value in choices for _ in range(weight)]
    return st.integers(0, len(values) - 1).map(values.__getitem__)


def machine_settings(max_examples: int, steps: int) -> settings:
    """Reproducible (derandomized, no example database) and bounded runs."""
    return settings(max_examples=max_examples, stateful_step_count=steps, deadline=None,
                    derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow])


# Indexes into the model's books (-1: a book that does not exist) and users
# (-1: the owner of the code the rule names).
BOOK = weighted((22, 0), (22, 1), (22, 2), (22, 3), (12, -1))
USER = weighted((70, -1), (10, 0), (10, 1), (10, 2))
ANY_USER = weighted((1, 0), (1, 1), (1, 2))
INDEX = st.integers(0, 40)
# Which code a checkout rule names: an assigned one, one with a live lock, one
# whose lock expired, any code, or one that does not exist.
ASSIGN_PICK = weighted((30, "assigned"), (60, "any"), (10, "ghost"))
LOCK_PICK = weighted((55, "assigned"), (25, "expired"), (10, "locked"), (5, "any"),
                     (5, "ghost"))
UNLOCK_PICK = weighted((60, "locked"), (20, "expired"), (10, "assigned"), (5, "any"),
                       (5, "ghost"))
REDEEM_PICK = weighted((40, "locked"), (35, "assigned"), (15, "expired"), (5, "any"),
                       (5, "ghost"))
# A back-end, the user itself, or another end user (who may not act for it).
CALLER = weighted((80, "backend"), (12, "self"), (8, "stranger"))
# No Idempotency-Key, a new one (the client's next operation), or one shared
# key (used again with another request: refused).
KEY = weighted((50, None), (35, "fresh"), (15, "shared"))
UNLOCK_TOKEN = weighted((75, "live"), (15, "stale"), (10, "bogus"))
REDEEM_TOKEN = weighted((60, "live"), (20, "none"), (10, "stale"), (10, "bogus"))
NAMED_BOOK = weighted((50, "none"), (25, "own"), (25, "other"))  # assign/{code}'s couponBookId
LOCK_TTL = weighted((70, None), (30, 900))
EVERY_LOCK = weighted((50, False), (50, True))  # expire one live lock, or all of them
LIST_SCOPE = weighted((60, "all"), (25, "book"), (15, "unknown"))
UPLOAD_ITEM = weighted((40, "new"), (20, "mine"), (15, "other"), (10, "repeat"),
                       (15, "invalid"))
INVALID_CODES = ("has space", "x" * 65, "", "semi;colon")

MAX_PER_USER = weighted((40, None), (30, 1), (30, 2))
REDEEMS = weighted((40, "once"), (30, "twice"), (30, "unlimited"))
REDEEM_LIMIT = {"once": 1, "twice": 2, "unlimited": None}
WINDOW = weighted((60, "open"), (15, "current"), (15, "future"), (10, "past"))
ACTIVE_WINDOWS = ("open", "current")
INITIAL_CODES = weighted((70, 0), (30, 2))


def book_request(name: str, max_per_user: int | None, redeems: str, window: str,
                 lock_ttl_seconds: int) -> dict[str, Any]:
    """A POST /coupons body."""
    now, day = datetime.now(UTC), timedelta(days=1)
    fields: dict[str, Any] = {"name": name, "lockTtlSeconds": lock_ttl_seconds}
    if max_per_user is not None:
        fields["maxPerUser"] = max_per_user
    if redeems != "once":
        fields["multipleRedeemsAllowed"] = True
    if redeems == "twice":
        fields["maxRedeemsPerCode"] = 2
    valid_from, valid_until = {"open": (None, None), "current": (now - day, now + day),
                               "future": (now + day, None),
                               "past": (now - 2 * day, now - day)}[window]
    if valid_from is not None:
        fields["validFrom"] = valid_from.isoformat()
    if valid_until is not None:
        fields["validUntil"] = valid_until.isoformat()
    return fields
