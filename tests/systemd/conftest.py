"""Fixtures that boot a real systemd as PID 1 in private namespaces (see systemd_sandbox.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from systemd_sandbox import Sandbox, unavailable_reason

_REASON: list[str | None] = []


def skip_without_sandbox() -> None:
    if not _REASON:
        _REASON.append(unavailable_reason())
    if _REASON[0] is not None:
        pytest.skip(_REASON[0])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One booted sandbox shared by a test module: booting is cheap (~1 s), but the tests'
    services are not, and a module is one story (start, kill, stop ...)."""
    skip_without_sandbox()
    box = Sandbox(tmp_path_factory.mktemp("sandbox"))
    box.boot()
    try:
        yield box
    finally:
        box.kill()


@pytest.fixture
def sandbox_root(tmp_path: Path) -> Path:
    """A root for tests that boot (and reboot) their own sandboxes."""
    skip_without_sandbox()
    return tmp_path / "root"
