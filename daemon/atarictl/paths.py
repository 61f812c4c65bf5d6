"""Where atarictl looks for the daemon's socket, database, run dirs and logs.

Lookup order (the same the daemon uses, see docs/architecture.md):
- state dir: --state-dir, else $STATE_DIRECTORY, else /var/lib/atari-supervisor if it exists,
  else ./state
- runtime dir: --runtime-dir, else $RUNTIME_DIRECTORY, else /run/atari-supervisor if it exists,
  else <state-dir>/run; the socket is <runtime-dir>/atarictl.sock unless --socket names it
- logs dir: --logs-dir, else $LOGS_DIRECTORY, else /var/log/atari-supervisor if it exists,
  else <state-dir>/logs
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from daemon.control_server.protocol import SOCKET_NAME

SYSTEM_STATE = Path("/var/lib/atari-supervisor")
SYSTEM_RUNTIME = Path("/run/atari-supervisor")
SYSTEM_LOGS = Path("/var/log/atari-supervisor")
DB_NAME = "atari.db"


@dataclass(frozen=True)
class CtlPaths:
    state_dir: Path
    runtime_dir: Path
    logs_dir: Path
    socket: Path

    @property
    def db(self) -> Path:
        return self.state_dir / DB_NAME

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"


def _env_dir(name: str) -> Path | None:
    # systemd may pass several colon-separated dirs; the first is ours.
    value = os.environ.get(name, "").split(":")[0]
    return Path(value) if value else None


def resolve(
    state_dir: Path | None = None,
    runtime_dir: Path | None = None,
    logs_dir: Path | None = None,
    socket: Path | None = None,
) -> CtlPaths:
    state = (
        state_dir
        or _env_dir("STATE_DIRECTORY")
        or (SYSTEM_STATE if SYSTEM_STATE.is_dir() else Path("state"))
    )
    # An explicit --state-dir means "that daemon": derive its runtime and logs dirs from it
    # rather than from a system install that happens to exist on the same box.
    explicit = state_dir is not None
    runtime = runtime_dir or (
        state / "run"
        if explicit
        else _env_dir("RUNTIME_DIRECTORY")
        or (SYSTEM_RUNTIME if SYSTEM_RUNTIME.is_dir() else state / "run")
    )
    logs = logs_dir or (
        state / "logs"
        if explicit
        else _env_dir("LOGS_DIRECTORY") or (SYSTEM_LOGS if SYSTEM_LOGS.is_dir() else state / "logs")
    )
    # Absolute, so messages and `models` paths stay meaningful outside the current directory.
    return CtlPaths(
        state_dir=state.absolute(),
        runtime_dir=runtime.absolute(),
        logs_dir=logs.absolute(),
        socket=(socket or runtime / SOCKET_NAME).absolute(),
    )
