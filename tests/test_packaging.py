"""A plain (non-editable) install carries the profiles and the systemd unit inside the package.

The wheel is built from a copy of the tracked sources (the checkout stays clean), installed with
``--no-deps`` into a fresh venv that borrows the test venv's dependencies through a ``.pth``
line, and then used from a directory outside the checkout: the default profile loads from the
package, ``install-service``'s unit template is found there, and the installed daemon runs the
default profile and answers the installed atarictl.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a wheel build, a venv and a daemon start: ~25 s

ROOT = Path(__file__).resolve().parents[1]
# What the wheel is built from: everything setup.py and pyproject.toml read.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "daemon", "trainer", "profiles", "systemd")


def _tracked_copy(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *SOURCES],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist, venv = tmp / "src", tmp / "dist", tmp / "venv"
    _tracked_copy(src)
    # No build isolation: the test venv's setuptools builds it, offline and in seconds.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(src), "-w", str(dist)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (wheel,) = dist.glob("atari_supervisor-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip())  # fmt: skip
    # torch, envpool, yaml ... from the test venv, after the venv's own site-packages; a .pth
    # line only adds the directory, so the test venv's editable-install hook is not run.
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
         str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return venv


def _run(venv: Path, cwd: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_the_installed_package_holds_the_profiles_and_the_unit(wheel_venv: Path, tmp_path: Path):
    py = str(wheel_venv / "bin" / "python")
    probe = (
        "import json, daemon\n"
        "from daemon.config import DEFAULT_PROFILE, DEFAULT_PROFILE_DIR, load_profile\n"
        "from daemon.atarictl.service import UNIT_TEMPLATE, render_unit\n"
        "p = load_profile(DEFAULT_PROFILE)\n"
        "unit = render_unit(UNIT_TEMPLATE.read_text(), '/x/bin/python')\n"
        "print(json.dumps({'package': daemon.__file__, 'profile': str(DEFAULT_PROFILE),\n"
        "  'profiles': sorted(f.name for f in DEFAULT_PROFILE_DIR.glob('*.yaml')),\n"
        "  'games': [g.name for g in p.games], 'unit': str(UNIT_TEMPLATE),\n"
        "  'unit_text': UNIT_TEMPLATE.read_text(), 'exec': '/x/bin/python -m daemon' in unit}))\n"
    )
    out = _run(wheel_venv, tmp_path, py, "-c", probe)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    installed = str(wheel_venv)
    assert got["package"].startswith(installed), got["package"]  # not the checkout
    assert got["profile"].startswith(installed) and got["profile"].endswith("cpu-tiny.yaml")
    assert got["profiles"] == sorted(p.name for p in (ROOT / "profiles").glob("*.yaml"))
    assert Path(got["profile"]).read_text() == (ROOT / "profiles" / "cpu-tiny.yaml").read_text()
    assert got["games"]
    assert got["unit"].startswith(installed)
    assert got["unit_text"] == (ROOT / "systemd" / "atari-supervisor.service").read_text()
    assert got["exec"]


def test_the_installed_daemon_runs_the_default_profile(wheel_venv: Path, tmp_path: Path):
    bin_ = wheel_venv / "bin"
    state = tmp_path / "state"
    ctl = [str(bin_ / "atarictl"), "--state-dir", str(state)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen(
        [str(bin_ / "atari-supervisord"), "--state-dir", str(state)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # a failure bound, not a measurement
        status = None
        while time.monotonic() < deadline and daemon.poll() is None:
            out = _run(wheel_venv, tmp_path, *ctl, "status", "--json", timeout=60)
            if out.returncode == 0:
                status = json.loads(out.stdout)
                break
            time.sleep(0.5)
        assert status is not None, (tmp_path / "daemon.log").read_text()[-3000:]
        shipped = (ROOT / "profiles" / "cpu-tiny.yaml").read_text()
        for game in (g["game"] for g in status["games"]):
            assert f"  {game}:" in shipped
        assert status["level"] == "light"
        down = _run(wheel_venv, tmp_path, *ctl, "shutdown", timeout=120)
        assert down.returncode == 0, down.stderr
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        log.close()
