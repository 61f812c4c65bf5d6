"""The daemon's decision parts wired as daemon/app.py wires them, on a fake clock and the
manager's fake OS seam: a real store, a real autoscaler with its own boot id file, a real
process manager and the supervisor. No loop pass is run: each test decides when."""

from __future__ import annotations

import uuid
from pathlib import Path

from daemon.autoscaler import Autoscaler
from daemon.clock import FakeClock
from daemon.config import Profile
from daemon.process import ProcessManager
from daemon.store import Store
from daemon.supervisor import Supervisor
from tests.support.fake_os import FakeOs


def wire(tmp_path: Path, profile: Profile) -> tuple[Supervisor, Autoscaler, FakeOs, FakeClock]:
    clock, fake = FakeClock(), FakeOs()
    store = Store.open(tmp_path / "atari.db")
    boot = tmp_path / "boot_id"
    boot.write_text(str(uuid.uuid4()))
    scaler = Autoscaler(profile.autoscaler, store, clock, boot_id_path=boot)
    scaler.record_boot()
    scaler.restore()
    mgr = ProcessManager(profile, store, clock, fake, tmp_path / "runs", tmp_path / "logs",
                         scaler.current_level())  # fmt: skip
    mgr.restore()
    return Supervisor(profile, store, clock, mgr, scaler), scaler, fake, clock
