"""A missing prerequisite skips a test on a developer's box and fails it under CI=true, so the
systemd layer can never be skipped silently by CI (tests/support/prereq.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.prereq import in_ci, missing, need

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", ["true", "True", "1", "yes"])
def test_under_ci_a_missing_prerequisite_fails(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match="prerequisite missing: needs unshare"):
        missing("needs unshare")
    with pytest.raises(pytest.fail.Exception):
        need(False, "needs root")
    need(True, "never raised")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_outside_ci_a_missing_prerequisite_skips(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match="needs unshare"):
        missing("needs unshare")


def _run_systemd_tests(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    # A PATH without unshare, nsenter or systemctl: the sandbox cannot boot.
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(tmp_path)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/systemd/test_systemd_reboot.py"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip


def test_systemd_tests_fail_under_ci_without_their_tools(tmp_path: Path) -> None:
    out = _run_systemd_tests(tmp_path, "true")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "prerequisite missing" in out.stdout and "1 error" in out.stdout, out.stdout
    out = _run_systemd_tests(tmp_path, None)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 skipped" in out.stdout, out.stdout
