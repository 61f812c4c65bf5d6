"""The 1-second bound of issue 5, shared by the server and daemon tests."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from daemon.atarictl.bench import attack

__all__ = ["assert_answers_within_a_second", "attack"]


def assert_answers_within_a_second(call: Callable[[], object], times: int = 5) -> None:
    """The issue's explicit bound: a normal request answers within one second under attack."""
    for _ in range(times):
        start = time.monotonic()
        call()
        took = time.monotonic() - start
        if took >= 1.0:
            pytest.fail(f"request took {took:.2f} s under attack; the bound is 1 s")
