"""What a missing prerequisite (root, a tool, a kernel feature) does to a test.

On a developer's box it skips the test with the reason. Under ``CI=true`` (``.ci/run`` sets it)
it fails the test instead: CI is where the systemd layer is proven, and a green run that skipped
it silently proves nothing (a survived mutation: no ``WATCHDOG=1`` sent, caught only when the
sandbox tests run).
"""

from __future__ import annotations

import os

import pytest

CI_VALUES = ("true", "1", "yes")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def missing(reason: str) -> None:
    """Skip the calling test, or, under CI, fail it. Never returns."""
    if in_ci():
        message = (
            f"CI={os.environ['CI']}: prerequisite missing: {reason} (CI must run this test; "
            "fix the CI machine, or unset CI to skip it locally)"
        )
        pytest.fail(message, pytrace=False)
    pytest.skip(reason)


def need(ok: bool, reason: str) -> None:
    """``missing(reason)`` unless ``ok``."""
    if not ok:
        missing(reason)
