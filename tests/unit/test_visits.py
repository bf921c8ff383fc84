"""When the writer reads, sweeps and trims each book (couponsvc.visits), on a
clock the test moves."""

from __future__ import annotations

import pytest

from couponsvc.visits import Visits

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def visits(clock: Clock) -> Visits:
    return Visits(first_gap=0.02, max_gap=0.5, sweep_every=1.0, full_sweep_every=60.0,
                  clock=clock)


def test_a_new_book_is_read_swept_and_trimmed_at_once(visits: Visits) -> None:
    assert visits.reads_due([1, 2]) == [1, 2]
    assert visits.sweeps_due([1, 2]) == [1, 2]
    assert visits.trims_due([1, 2]) == [1, 2]


def test_an_empty_book_is_read_ever_later_up_to_the_longest_gap(
        visits: Visits, clock: Clock) -> None:
    gaps = []
    for _ in range(7):
        visits.read(1, found=False)
        start = clock.now
        while not visits.reads_due([1]):
            clock.now += 0.01
        gaps.append(round(clock.now - start, 2))
    assert gaps == [0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5]


def test_a_book_with_entries_is_read_on_every_pass_again(visits: Visits, clock: Clock) -> None:
    for _ in range(5):
        visits.read(1, found=False)
    visits.read(1, found=True)
    assert visits.reads_due([1]) == [1]
    visits.read(1, found=False)  # the backoff starts over
    clock.now += 0.02
    assert visits.reads_due([1]) == [1]


def test_after_a_full_sweep_only_books_that_had_events_are_swept(
        visits: Visits, clock: Clock) -> None:
    visits.sweeps_due([1, 2, 3])
    for number in (1, 2, 3):
        visits.swept(number, more=False, next_end_in_ms=None)
    visits.had_events(2)

    clock.now += 0.9
    assert visits.sweeps_due([1, 2, 3]) == []
    clock.now += 0.1
    assert visits.sweeps_due([1, 2, 3]) == [2]


def test_a_sweep_that_found_a_live_lock_comes_back_just_after_it_ends(
        visits: Visits, clock: Clock) -> None:
    visits.sweeps_due([1])
    visits.swept(1, more=False, next_end_in_ms=30_000)  # a lock ends in 30 s

    clock.now += 30.0
    assert visits.sweeps_due([1]) == []
    clock.now += 0.001
    assert visits.sweeps_due([1]) == [1]


def test_events_do_not_put_off_a_sweep_already_due_sooner(
        visits: Visits, clock: Clock) -> None:
    visits.sweeps_due([1])
    visits.swept(1, more=False, next_end_in_ms=200)
    visits.had_events(1)  # would be 1 s from now

    clock.now += 0.201
    assert visits.sweeps_due([1]) == [1]


def test_a_sweep_that_left_ended_locks_comes_back_on_the_next_pass(visits: Visits) -> None:
    visits.sweeps_due([1])
    visits.swept(1, more=True, next_end_in_ms=0)
    assert visits.sweeps_due([1]) == [1]


def test_every_book_is_swept_again_after_the_full_sweep_interval(
        visits: Visits, clock: Clock) -> None:
    visits.sweeps_due([1, 2])
    for number in (1, 2):
        visits.swept(number, more=False, next_end_in_ms=None)

    clock.now += 59.9
    assert visits.sweeps_due([1, 2]) == []
    clock.now += 0.1
    assert visits.sweeps_due([1, 2]) == [1, 2]


def test_only_books_that_had_events_are_trimmed_again(visits: Visits) -> None:
    for number in (1, 2):
        visits.trimmed(number)
    visits.had_events(1)
    assert visits.trims_due([1, 2]) == [1]


def test_a_book_dropped_from_the_list_starts_over_when_it_comes_back(
        visits: Visits, clock: Clock) -> None:
    for _ in range(6):
        visits.read(1, found=False)
    visits.trimmed(1)
    visits.forget_others([2])
    assert visits.reads_due([1]) == [1]
    assert visits.trims_due([1]) == [1]
