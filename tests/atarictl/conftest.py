"""Fixtures of the atarictl tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.state import populate_state


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return populate_state(tmp_path / "state")
