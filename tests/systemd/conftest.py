"""Fixtures that boot a real systemd as PID 1 in private namespaces (see systemd_sandbox.py).

Without a prerequisite (root, unshare, systemd ...) the tests skip with the reason, except
under ``CI=true``, where they fail (tests/support/prereq.py): CI must prove this layer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from atari_service import UNIT, Service
from systemd_sandbox import Sandbox, unavailable_reason

from tests.support.prereq import missing

_REASON: list[str | None] = []


def require_sandbox() -> None:
    """Skip (fail under CI) when a sandbox cannot be booted here; probed once per session."""
    if not _REASON:
        _REASON.append(unavailable_reason())
    if _REASON[0] is not None:
        missing(_REASON[0])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One booted sandbox shared by a test module: booting is cheap (~1 s), but the tests'
    services are not, and a module is one story (start, kill, stop ...)."""
    require_sandbox()
    box = Sandbox(tmp_path_factory.mktemp("sandbox"))
    box.boot()
    try:
        yield box
    finally:
        box.kill()


@pytest.fixture(scope="module")
def service(sandbox: Sandbox) -> Iterator[Service]:
    """The unit installed in the module's sandbox (its drop-in written, not started)."""
    svc = Service(sandbox)
    svc.write_dropin()
    yield svc
    # Whatever failed, stop the service gracefully before the sandbox is killed.
    sandbox.systemctl("stop", UNIT, check=False, timeout=200)


@pytest.fixture
def sandbox_root(tmp_path: Path) -> Path:
    """A root for tests that boot (and reboot) their own sandboxes."""
    require_sandbox()
    return tmp_path / "root"
