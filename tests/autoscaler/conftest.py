"""Fixtures for the autoscaler tests; the simulated box lives in ``autoscaler_box``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.autoscaler_box import Box, policy


@pytest.fixture
def make_box(tmp_path: Path) -> Iterator[Callable[..., Box]]:
    boxes: list[Box] = []

    def make(**overrides: Any) -> Box:
        box = Box(tmp_path / f"box{len(boxes)}", policy(**overrides))
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        box.store.close()
