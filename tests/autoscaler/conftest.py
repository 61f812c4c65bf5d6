"""Fixtures for the autoscaler tests; the simulated box lives in ``autoscaler_box``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.autoscaler_box import Box, policy


@pytest.fixture
def make_box(tmp_path: Path, new_db) -> Iterator[Callable[..., Box]]:
    """Boxes on SQLite files, and again on a real PostgreSQL server (``new_db``'s two params)."""
    boxes: list[Box] = []

    def make(**overrides: Any) -> Box:
        box = Box(tmp_path / f"box{len(boxes)}", policy(**overrides), db=new_db())
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        box.store.close()
