"""Fixtures of the atarictl tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from ctl_helpers import populate_state


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return populate_state(tmp_path / "state")
