"""Fixtures of the infrastructure tests: each stack built once under pulumi's mocks.

These tests import the Pulumi program from pulumi/ (couponinfra) and need neither the
Pulumi CLI nor a cluster nor a network. They use none of the project's tests/ fixtures.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra_harness import Build, Builder, MockEventLoops, build, stack_names  # noqa: E402


@pytest.fixture(scope="session")
def mock_loops() -> Iterator[MockEventLoops]:
    with MockEventLoops() as loops:
        yield loops


@pytest.fixture(scope="session")
def stacks(mock_loops: MockEventLoops) -> Builder:
    """stacks(name) is the stack as its file describes it, built once per session;
    stacks(name, {key: value}) builds it again with keys replaced (None: removed)."""
    built: dict[str, Build] = {}

    def get(stack: str, overrides: Mapping[str, Any] | None = None) -> Build:
        if overrides is not None:
            return build(stack, overrides)
        if stack not in built:
            built[stack] = build(stack)
        return built[stack]

    return get


@pytest.fixture(params=stack_names())
def each_stack(request: pytest.FixtureRequest, stacks: Builder) -> Build:
    """Every stack file next to Pulumi.yaml, in turn."""
    return stacks(request.param)
