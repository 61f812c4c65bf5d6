"""A simulated box for the autoscaler: fake clock, fake boot-id file, real store (an SQLite
file, or a database on a real PostgreSQL server).

``Box.restart_daemon`` builds a fresh ``Autoscaler`` on the same database, the way the daemon
does at start (record the boot, restore, check), so every test also exercises persistence.

The box is busy unless told otherwise: its level's slots hold trainers, whose runs it writes to
the store as the process manager does (a level change restarts them at the new level, a daemon
restart or a reboot ends them). ``idle()``, ``run(n)`` and ``wanting`` change that load.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from daemon.autoscaler import Autoscaler, Decision
from daemon.clock import FakeClock
from daemon.config import AutoscalerPolicy
from daemon.level_source import Load
from daemon.store import Store
from daemon.store.schema import Outcome

MIN = 60.0
HOUR = 3600.0
T0 = 1_700_000_000.0
SLOTS = 2  # every level's parallel games in the simulated profile


def policy(**overrides: Any) -> AutoscalerPolicy:
    if "ladder" in overrides:
        overrides["ladder"] = tuple(overrides["ladder"])
    return AutoscalerPolicy(**overrides)


class Box:
    def __init__(
        self, tmp_path: Path, pol: AutoscalerPolicy, db: Path | str | None = None
    ) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.policy = pol
        self.clock = FakeClock(T0)
        self.boot_file = tmp_path / "boot_id"
        self.boot_file.write_text(f"{uuid.uuid4()}\n")
        # An SQLite file of its own unless given a database (a PostgreSQL URL: conftest.new_db).
        self.db = tmp_path / "atari.db" if db is None else db
        self.store = Store.open(self.db)
        self.decisions: list[Decision] = []
        self.wanting = SLOTS  # games that want a slot (not DONE, FATAL or STOPPED)
        self.busy = True  # keep the level's slots filled (min(SLOTS, wanting) trainers)
        self._open: list[int] = []  # run ids alive now
        self.scaler = self._start()

    def _start(self, reboot: bool = False) -> Autoscaler:
        # The old daemon's trainers are gone: killed by the reboot, or stopped at start.
        self._end_runs(Outcome.UNKNOWN if reboot else Outcome.STOPPED)
        scaler = Autoscaler(self.policy, self.store, self.clock, boot_id_path=self.boot_file)
        scaler.load = lambda: Load({lv: SLOTS for lv in self.policy.ladder}, self.wanting)
        scaler.record_boot()
        scaler.restore()
        self.scaler = scaler
        self._fill()
        return scaler

    # -- the load: trainer runs in the store, as the process manager writes them --------------
    def run(self, n: int) -> None:
        """Exactly ``n`` trainers of the current level run from now on."""
        self.busy = False
        self._end_runs(Outcome.STOPPED)
        self._start_runs(n)

    def idle(self) -> None:
        self.run(0)

    def fill(self) -> None:
        self.busy = True
        self._fill()

    def _fill(self) -> None:
        if self.busy:
            self._end_runs(Outcome.STOPPED)
            self._start_runs(min(SLOTS, self.wanting))

    def _start_runs(self, n: int) -> None:
        level = self.scaler.current_level()
        for i in range(n):
            self._open.append(self.store.run_started(
                f"game{i}", 5000 + i, self.clock.now(), level=level, num_envs=1, batch_size=1,
                proc_start_time=None,
            ))  # fmt: skip

    def _end_runs(self, outcome: Outcome) -> None:
        for run in self._open:
            self.store.run_ended(run, self.clock.now(), exit_code=0, signal=None,
                                 reason="stopped", outcome=outcome)  # fmt: skip
        self._open.clear()

    @property
    def state(self) -> str:
        return self.scaler.state

    def check(self) -> Decision | None:
        decision = self.scaler.check()
        if decision is not None:
            self.decisions.append(decision)
            if decision.level_changed:
                self._fill()  # the supervisor restarts the games at the new level
        return decision

    def restart_daemon(self, reboot: bool = False) -> Decision | None:
        """Same boot, new daemon process: a new Autoscaler on the same file, then one check."""
        self._start(reboot)
        return self.check()

    def reboot(self) -> Decision | None:
        self.boot_file.write_text(f"{uuid.uuid4()}\n")
        return self.restart_daemon(reboot=True)

    def crash(
        self,
        game: str = "Pong",
        reason: str = "crashed: exit 1",
        code: int | None = 1,
        sig: str | None = None,
        outcome: Outcome = Outcome.CRASH,
    ) -> None:
        """A trainer run ending now, classified the way the process manager classifies it
        (tests/autoscaler/test_autoscaler_supervisor.py checks the real manager's rows)."""
        now = self.clock.now()
        run = self.store.run_started(
            game,
            4242,
            now - 5,
            level=self.scaler.current_level(),
            num_envs=1,
            batch_size=1,
            proc_start_time=None,
        )
        self.store.run_ended(run, now, exit_code=code, signal=sig, reason=reason, outcome=outcome)

    def elapse(self, seconds: float, every: float = 5 * MIN) -> list[Decision]:
        """Let time pass with a stability check every ``every`` seconds (the scheduler's job)."""
        made = []
        left = seconds
        while left > 0:
            step = min(every, left)
            self.clock.advance(step)
            left -= step
            decision = self.check()
            if decision is not None:
                made.append(decision)
        return made
