"""Where the daemon's state lives, and who may hold it: one rule for the daemon and atarictl.

Each directory comes from the first source that names it, most specific first:

1. a command-line flag (``--state-dir``, ``--runtime-dir``, ``--logs-dir``; atarictl: ``--socket``);
2. systemd's ``$STATE_DIRECTORY`` / ``$RUNTIME_DIRECTORY`` / ``$LOGS_DIRECTORY`` (first of a
   colon-separated list);
3. the profile's ``paths:`` (the daemon has a profile; atarictl does not);
4. the system install (``/var/lib/atari-supervisor``, ``/run/atari-supervisor``,
   ``/var/log/atari-supervisor``) when its state dir exists;
5. ``./state``, with ``<state-dir>/run`` and ``<state-dir>/logs``.

The runtime and logs dirs never come from a source less specific than the one that gave the state
dir: ``--state-dir X`` means "the daemon of X", so its socket is ``X/run/atarictl.sock`` even on a
box with a system install or inside a systemd shell. Because the daemon and atarictl call the same
``resolve_dirs``, the same flags always find the same daemon.

The single-instance lock (``daemon.lock`` in the state dir) is taken by the daemon for its
lifetime and by ``atarictl restore`` for the swap, so neither runs while the other does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

SOCKET_NAME = "atarictl.sock"
DB_NAME = "atari.db"
RUNS_NAME = "runs"
LOCK_NAME = "daemon.lock"
# A copy of the profile the daemon runs under, kept with the state it produced (backups take it).
PROFILE_COPY_NAME = "profile-in-effect.yaml"

SYSTEM_STATE = Path("/var/lib/atari-supervisor")
SYSTEM_RUNTIME = Path("/run/atari-supervisor")
SYSTEM_LOGS = Path("/var/log/atari-supervisor")

# Source ranks of the lookup above (lower is more specific).
_FLAG, _ENV, _PROFILE, _SYSTEM, _DEFAULT = range(5)


@dataclass(frozen=True)
class Dirs:
    state_dir: Path
    runtime_dir: Path
    logs_dir: Path
    socket: Path
    runs: Path | None = None  # the profile's paths.runs_dir (fleet mode: shared storage)

    @property
    def db(self) -> Path:
        return self.state_dir / DB_NAME

    @property
    def runs_dir(self) -> Path:
        return self.runs if self.runs is not None else self.state_dir / RUNS_NAME

    @property
    def lock_file(self) -> Path:
        return self.state_dir / LOCK_NAME

    @property
    def profile_copy(self) -> Path:
        return self.state_dir / PROFILE_COPY_NAME


class ProfileDirs(Protocol):
    """The profile's ``paths:`` section as far as directories go (``config.Paths`` is one)."""

    @property
    def state_dir(self) -> str | None: ...
    @property
    def runtime_dir(self) -> str | None: ...
    @property
    def logs_dir(self) -> str | None: ...


def _env_dir(env: Mapping[str, str], name: str) -> Path | None:
    # systemd may pass several colon-separated dirs; the first is ours.
    value = env.get(name, "").split(":")[0]
    return Path(value) if value else None


def _first(candidates: list[tuple[int, Path | str | None]], at_most: int) -> Path | None:
    for rank, value in candidates:
        if rank <= at_most and value:
            return Path(value)
    return None


def resolve_dirs(
    state_dir: Path | str | None = None,
    runtime_dir: Path | str | None = None,
    logs_dir: Path | str | None = None,
    socket: Path | str | None = None,
    *,
    profile: ProfileDirs | None = None,
    env: Mapping[str, str] | None = None,
    system: tuple[Path, Path, Path] = (SYSTEM_STATE, SYSTEM_RUNTIME, SYSTEM_LOGS),
) -> Dirs:
    """The daemon's directories by the rule in this module's docstring; paths are absolute."""
    env = os.environ if env is None else env
    sys_state, sys_runtime, sys_logs = system
    on_system = sys_state.is_dir()
    states = [
        (_FLAG, state_dir),
        (_ENV, _env_dir(env, "STATE_DIRECTORY")),
        (_PROFILE, profile.state_dir if profile else None),
        (_SYSTEM, sys_state if on_system else None),
        (_DEFAULT, Path("state")),
    ]
    rank, state = next((r, Path(v)) for r, v in states if v)
    runtime = (
        _first(
            [
                (_FLAG, runtime_dir),
                (_ENV, _env_dir(env, "RUNTIME_DIRECTORY")),
                (_PROFILE, profile.runtime_dir if profile else None),
                (_SYSTEM, sys_runtime if rank == _SYSTEM else None),
            ],
            rank,
        )
        or state / "run"
    )
    logs = (
        _first(
            [
                (_FLAG, logs_dir),
                (_ENV, _env_dir(env, "LOGS_DIRECTORY")),
                (_PROFILE, profile.logs_dir if profile else None),
                (_SYSTEM, sys_logs if rank == _SYSTEM else None),
            ],
            rank,
        )
        or state / "logs"
    )
    # Absolute (not resolved: symlinks stay as the operator named them), so messages and stored
    # paths stay meaningful outside the current directory.
    return Dirs(
        state_dir=state.absolute(),
        runtime_dir=runtime.absolute(),
        logs_dir=logs.absolute(),
        socket=Path(socket or runtime / SOCKET_NAME).absolute(),
        runs=Path(runs).absolute() if (runs := getattr(profile, "runs_dir", None)) else None,
    )


def fsync_dir(d: Path) -> None:
    """Make a rename (or a new file) in ``d`` durable: the directory entry, not only the data."""
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def profile_copy(state_dir: Path) -> dict[str, Any]:
    """The profile the state dir's daemon last ran under (its copy, ``PROFILE_COPY_NAME``), as
    YAML; {} when there is none or it cannot be read."""
    import yaml

    try:
        doc = yaml.safe_load((state_dir / PROFILE_COPY_NAME).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, dict) else {}


def box_of(state_dir: Path) -> str:
    """The box the state dir's daemon ran as (its profile's ``box``, else the host name): the
    per-box rows (level, boots, daemon runs) that offline reads show are that box's."""
    box = profile_copy(state_dir).get("box")
    return box if isinstance(box, str) and box else default_box()


def default_box() -> str:
    """A box's name when the profile gives none: the host name (docs/configuration.md: box)."""
    return socket.gethostname() or "localhost"


# ------------------------------------------------------------------------- directory trust


class UnsafeDir(RuntimeError):
    """A directory the daemon would trust with code (checkpoints are loaded, the socket takes
    commands) that someone else could write to; str() is one line with the fix."""


def check_trusted(dirs: Dirs, euid: int | None = None) -> None:
    """Refuse state, runs and runtime dirs that another user could write: whoever can plant
    files there can feed the daemon a checkpoint, a database or a socket. A dir must be owned by
    the daemon's user or root and not be writable by group or others (a sticky dir, like
    /tmp, does not count as trusted either). A symlinked dir is checked at its target."""
    euid = os.geteuid() if euid is None else euid
    for what, d in (("state dir", dirs.state_dir), ("runs dir", dirs.runs_dir),
                    ("runtime dir", dirs.runtime_dir)):  # fmt: skip
        try:
            st = d.stat()
        except FileNotFoundError:
            continue  # created by the daemon with its own umask
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeDir(f"{what} {d}: is not a directory; remove it or pass another one")
        if st.st_uid not in (euid, 0):
            raise UnsafeDir(
                f"{what} {d}: owned by uid {st.st_uid}, not by the daemon's user (uid {euid}) or "
                f"root; fix: chown {euid} {d}"
            )
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeDir(
                f"{what} {d}: writable by group or others (mode {mode:04o}), so anyone could plant "
                f"a checkpoint or socket there; fix: chmod go-w {d}"
            )


# ------------------------------------------------------------------------- the state-dir lock


class StateDirLocked(RuntimeError):
    """Another process holds the state dir's lock; str() is one line naming it and the fix."""

    def __init__(self, state_dir: Path, pid: str, holder: str) -> None:
        self.state_dir, self.pid, self.holder = state_dir, pid, holder
        fix = (
            "wait for the restore to finish"
            if holder.startswith("atarictl")
            else "stop it first (atarictl shutdown or systemctl stop atari-supervisor)"
        )
        super().__init__(
            f"{state_dir}: another {holder} (pid {pid}) uses this state dir; {fix}, "
            "or pass another --state-dir"
        )


def lock_state_dir(state_dir: Path, holder: str) -> IO[str]:
    """Take the state dir's exclusive lock (non-blocking) and record ``pid holder`` in it.

    The lock lasts as long as the returned file stays open (flock is released on close and when
    the process dies, so a SIGKILLed holder never leaves a stale lock). The file is opened without
    following a symlink: a planted ``daemon.lock -> /etc/...`` must not be truncated by root.
    """
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(f"{path}: is a symlink; remove it (rm {path})") from None
        raise
    f = os.fdopen(fd, "r+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = f.read().strip()
        f.close()
        pid, _, who = text.partition(" ")
        raise StateDirLocked(state_dir, pid or "?", who or "atari-supervisord") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()} {holder}\n")
    f.flush()
    return f


@contextlib.contextmanager
def state_dir_locked(state_dir: Path, holder: str) -> Iterator[None]:
    f = lock_state_dir(state_dir, holder)
    try:
        yield
    finally:
        f.close()
