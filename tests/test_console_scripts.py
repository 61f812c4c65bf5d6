"""Each console script of the distribution is installed and answers --help."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = {
    "atari-trainer": "trainer",
    "atari-supervisord": "daemon",
    "atarictl": "daemon.atarictl",
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_answers_help(script: str) -> None:
    # The venv's bin dir first: CI runs `.venv/bin/python -m pytest` without activating the venv.
    path = shutil.which(script, path=str(Path(sys.executable).parent)) or shutil.which(script)
    assert path is not None, f"{script} is not installed: run pip install -e ."
    out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"usage: {script}" in out.stdout


@pytest.mark.parametrize("module", sorted(set(SCRIPTS.values())))
def test_python_dash_m_answers_help(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_answers_version(script: str) -> None:
    from importlib.metadata import version

    path = shutil.which(script, path=str(Path(sys.executable).parent)) or shutil.which(script)
    assert path is not None, f"{script} is not installed: run pip install -e ."
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{script} {version('atari-supervisor')}"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_atarictl_prints_a_completion_script_naming_every_command(shell: str) -> None:
    from daemon.atarictl.cli import _commands, build_parser

    out = subprocess.run(
        [sys.executable, "-m", "daemon.atarictl", "--print-completion", shell],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for command in _commands(build_parser()):
        assert command in out.stdout
    if shell == "bash":  # the script is valid bash
        check = subprocess.run(["bash", "-n"], input=out.stdout, text=True, timeout=60)
        assert check.returncode == 0
