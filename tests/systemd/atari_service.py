"""The installed atari-supervisor service inside a sandbox, as the tests look at it: systemd's
view (systemctl, journal), the processes, and the daemon's files read from the host side."""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from systemd_sandbox import Sandbox, wait_for

UNIT = "atari-supervisor.service"
PROFILE = Path(__file__).with_name("sandbox-profile.yaml")
GAMES = ("CartPole-v1", "Pong")
# Under /run, which the service shares with the test (its /tmp is private).
STALL_FILE = "/run/atari-test-stall"

# Test-only settings, as an operator would add them: a drop-in next to the installed unit.
DROPIN = f"""[Service]
Environment=OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
Environment=ATARI_SUPERVISOR_TEST_STALL_FILE={STALL_FILE}
# A short watchdog so the stall test waits seconds, not a minute (health runs every 1 s).
WatchdogSec=8s
RestartSec=1s
"""


def _bind_private_tmp_paths() -> str:
    """A checkout or venv under /tmp (e.g. a CI clone in /tmp/ci-check) is invisible to the
    service, whose PrivateTmp=yes gives it an empty /tmp (203/EXEC). Bind those paths back in,
    read-only, rather than weakening the unit under test; systemd mounts them over its private
    /tmp. A checkout anywhere else needs nothing."""
    private = (Path("/tmp"), Path("/var/tmp"))
    paths = [
        p for p in map(Path, Sandbox.keep_paths()) if any(p == d or d in p.parents for d in private)
    ]
    return "".join(f"BindReadOnlyPaths={p}\n" for p in paths)


class Service:
    def __init__(self, box: Sandbox) -> None:
        self.box = box

    @property
    def state_dir(self) -> Path:
        return self.box.root / "var" / "lib" / "atari-supervisor"

    @property
    def logs_dir(self) -> Path:
        return self.box.root / "var" / "log" / "atari-supervisor"

    # -- install ----------------------------------------------------------------------------------

    def write_dropin(self) -> None:
        where = "/etc/systemd/system/atari-supervisor.service.d"
        self.box.run("mkdir", "-p", where)
        self.box.run("tee", f"{where}/test.conf", input=DROPIN + _bind_private_tmp_paths())

    def atarictl(self, *args: str, timeout: float = 300) -> Any:
        """Run atarictl inside the sandbox, with the venv's interpreter like an operator would."""
        return self.box.run(
            sys.executable, "-m", "daemon.atarictl", *args, check=False, timeout=timeout
        )

    # -- systemd's view ---------------------------------------------------------------------------

    def props(self, *names: str) -> dict[str, str]:
        return self.box.show(UNIT, *names)

    def timestamp(self, prop: str) -> float:
        """A unit timestamp property (e.g. ActiveEnterTimestamp) as unix time, to the µs."""
        out = self.box.systemctl("show", UNIT, "--timestamp=us+utc", "-P", prop).stdout.strip()
        when = datetime.strptime(out, "%a %Y-%m-%d %H:%M:%S.%f UTC")
        return when.replace(tzinfo=UTC).timestamp()

    def restarts(self) -> int:
        return int(self.props("NRestarts")["NRestarts"])

    def is_active(self) -> bool:
        p = self.props("ActiveState", "SubState")
        return (p["ActiveState"], p["SubState"]) == ("active", "running")

    def journal(self, *args: str) -> str:
        return self.box.journal(UNIT, "-o", "cat", *args)

    def journal_json(self, *args: str) -> list[dict[str, Any]]:
        out = self.box.journal(UNIT, "-o", "json", *args)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # -- processes --------------------------------------------------------------------------------

    def trainers(self) -> dict[str, list[int]]:
        """Trainer pids per game (sandbox pids), from the process table."""
        out = self.box.run("ps", "-eo", "pid=,args=").stdout
        found: dict[str, list[int]] = {game: [] for game in GAMES}
        for line in out.splitlines():
            pid, _, args = line.strip().partition(" ")
            argv = args.split()
            if "trainer" in argv and "--game" in argv and "-m" in argv:
                game = argv[argv.index("--game") + 1]
                found.setdefault(game, []).append(int(pid))
        return found

    # -- the daemon's files -----------------------------------------------------------------------

    def progress(self, game: str) -> dict[str, Any] | None:
        path = self.state_dir / "runs" / game / "progress.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # not written yet, or caught between write and rename

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        db = self.state_dir / "atari.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def wait_training(
        self, timeout: float = 240, min_episodes: int = 0, batch_size: int | None = None
    ) -> dict[str, dict]:
        """Wait until every game has exactly one trainer whose progress says running (with
        BATCH_SIZE, when given: the settings of a level)."""
        latest: dict[str, dict] = {}

        def ready() -> bool:
            trainers = self.trainers()
            for game in GAMES:
                progress = self.progress(game)
                if progress is None or len(trainers.get(game, [])) != 1:
                    return False
                if progress.get("status") != "running" or progress["pid"] != trainers[game][0]:
                    return False
                if game == "CartPole-v1" and progress["episodes"] < min_episodes:
                    return False
                if batch_size is not None and progress["batch_size"] != batch_size:
                    return False
                latest[game] = progress
            return True

        wait_for(ready, timeout, f"trainers never ran: {self.trainers()} {self.journal()[-3000:]}")
        return latest

    def wait_restarted(self, before: int, timeout: float = 240) -> None:
        wait_for(
            lambda: self.restarts() > before and self.is_active(),
            timeout,
            f"no restart after {before}: {self.journal()[-3000:]}",
        )
