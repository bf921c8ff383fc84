"""The serving processes' garbage-collector tuning (runtime.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from couponsvc.runtime import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_collections_are_rarer() -> None:
    started_with = [[] for _ in range(10)]  # containers alive at start-up
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # CPython's default
    assert gc.get_freeze_count() >= len(started_with)
