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


def test_an_empty_book_waits_a_tenth_of_its_silence_between_reads(
        visits: Visits, clock: Clock) -> None:
    reads = [clock.now]
    visits.read(1, found=False)
    while clock.now < 110.0:
        clock.now = round(clock.now + 0.001, 3)
        if visits.reads_due([1]):
            reads.append(clock.now)
            visits.read(1, found=False)
    gaps = [round(b - a, 3) for a, b in zip(reads, reads[1:], strict=False)]
    after_one_second = next(i for i, t in enumerate(reads) if t >= 101.0)
    assert gaps[:3] == [0.02, 0.02, 0.02]  # at least first_gap
    assert 0.1 <= gaps[after_one_second] <= 0.111  # quiet for 1 s: about 0.1 s
    assert gaps[-3:] == [0.5, 0.5, 0.5]  # quiet for 5 s and more: the longest gap
    assert all(b >= a for a, b in zip(gaps, gaps[1:], strict=False))


def test_a_book_with_entries_is_read_on_every_pass_again(visits: Visits, clock: Clock) -> None:
    visits.read(1, found=False)
    clock.now += 30.0  # quiet for 30 s: 0.5 s between reads
    visits.read(1, found=False)
    visits.read(1, found=True)
    assert visits.reads_due([1]) == [1]
    visits.read(1, found=False)  # its silence starts over
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
    visits.read(1, found=False)
    clock.now += 30.0
    visits.read(1, found=False)
    visits.trimmed(1)
    visits.forget_others([2])
    assert visits.reads_due([1]) == [1]
    assert visits.trims_due([1]) == [1]
