"""The sandbox itself: a real systemd as PID 1 that runs a Type=notify unit, and keeps its
writes away from the host."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
from systemd_sandbox import Sandbox, wait_for

pytestmark = pytest.mark.systemd

REPO = Path(__file__).resolve().parents[2]

# Sends READY only once the gate file exists, so the test can look at the unit before READY
# without any timing; the status line proves STATUS= reaches `systemctl status`.
NOTIFY_SCRIPT = """
import os, sys, time
sys.path.insert(0, {repo!r})
from daemon.sdnotify import Notifier
gate, started = sys.argv[1], sys.argv[2]
notifier = Notifier()
open(started, "w").write(str(os.getpid()))
while not os.path.exists(gate):
    time.sleep(0.1)
notifier.ready(status="light · 2 running · 0 queued · 0 fatal")
while True:
    time.sleep(1)
"""


def test_notify_unit_is_active_only_after_ready(sandbox: Sandbox) -> None:
    work = sandbox.root / "notify"
    work.mkdir()
    script = work / "notify.py"
    script.write_text(NOTIFY_SCRIPT.format(repo=str(REPO)))
    gate, started = work / "gate", work / "started"
    sandbox.install_unit(
        "notify-probe.service",
        "[Service]\nType=notify\nNotifyAccess=main\n"
        f"ExecStart={sys.executable} {script} {gate} {started}\n",
    )
    sandbox.systemctl("start", "--no-block", "notify-probe.service")
    wait_for(started.exists, 60, "the probe never started")
    state = sandbox.show("notify-probe.service", "ActiveState", "SubState", "MainPID")
    assert state["ActiveState"] == "activating", state
    assert state["MainPID"] != "0"

    gate.touch()
    wait_for(
        lambda: sandbox.show("notify-probe.service", "ActiveState")["ActiveState"] == "active",
        60,
        "the probe never became active after READY",
    )
    status = sandbox.systemctl("status", "notify-probe.service", check=False).stdout
    assert "active (running)" in status
    assert 'Status: "light · 2 running · 0 queued · 0 fatal"' in status
    sandbox.systemctl("stop", "notify-probe.service")
    assert sandbox.show("notify-probe.service", "ActiveState")["ActiveState"] == "inactive"


def test_sandbox_writes_stay_private(sandbox: Sandbox) -> None:
    name = f"atari-sandbox-probe-{uuid.uuid4()}"
    for where in ("/tmp", "/run", "/etc", "/var/lib"):
        sandbox.run("touch", f"{where}/{name}")
        assert not Path(where, name).exists(), f"{where} of the sandbox is the host's"
    # /etc and /var are the sandbox root's own directories, so they survive a reboot.
    assert (sandbox.root / "etc" / name).exists()
    assert (sandbox.root / "var" / "lib" / name).exists()


def test_boot_id_is_the_sandboxs_own(sandbox: Sandbox) -> None:
    inside = sandbox.run("cat", "/proc/sys/kernel/random/boot_id").stdout.strip()
    assert inside == sandbox.boot_id
    assert inside != Path("/proc/sys/kernel/random/boot_id").read_text().strip()
