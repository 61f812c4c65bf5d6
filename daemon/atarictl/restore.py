"""`atarictl restore`: verify the whole archive, extract into a staging dir inside the state dir,
check the hashes again on disk, then swap `atari.db` and `runs/` into place under a journal
(the intent file), so a crash mid-swap is finished forward by `recover_interrupted_restore`.
The previous state is kept under `<state-dir>/pre-restore-<stamp>/`.

On a PostgreSQL store (the profile's ``store.url``), the archived rows are loaded into the server
in one transaction (daemon/store/portable.py) instead of swapping the file in, after the
server's current rows are saved as ``pre-restore-<stamp>/atari.db``; only ``runs/`` is swapped."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import sqlite3
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import structlog

from daemon.atarictl.archive import BackupError, _walk, verify
from daemon.atarictl.client import Client
from daemon.paths import (
    DB_NAME,
    LOCK_NAME,
    RUNS_NAME,
    Dirs,
    StateDirLocked,
    fsync_dir,
    lock_state_dir,
)

log = structlog.get_logger("daemon.atarictl.restore")


def _daemon_running(paths: Dirs) -> str | None:
    if Client(paths.socket).reachable():
        return f"a daemon answers on {paths.socket}"
    if not paths.db.is_file():
        return None
    with contextlib.suppress(sqlite3.Error):
        conn = sqlite3.connect(f"{paths.db.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute(
                "SELECT pid FROM daemon_runs WHERE stopped_at IS NULL ORDER BY id DESC LIMIT 1"
            ).fetchone()
        finally:
            conn.close()
        if row and row[0] and psutil.pid_exists(int(row[0])):
            with contextlib.suppress(psutil.Error):
                cmd = " ".join(psutil.Process(int(row[0])).cmdline())
                if "atari-supervisord" in cmd or "-m daemon" in cmd:
                    return f"daemon pid {row[0]} is still running"
    return None


def restore(paths: Dirs, archive: Path, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    archive = Path(archive).absolute()
    running = _daemon_running(paths)
    if running:
        raise BackupError(
            f"refusing to restore while the daemon runs ({running}); stop it first "
            "(atarictl shutdown or systemctl stop atari-supervisor)",
            "daemon_running",
        )
    manifest = verify(archive)
    state = paths.state_dir.absolute()
    state.mkdir(parents=True, exist_ok=True)
    # The daemon's own single-instance lock, held for the whole restore: a daemon running on
    # this state dir makes us refuse, and one started meanwhile refuses to start.
    try:
        lock = lock_state_dir(state, "atarictl restore")
    except StateDirLocked as exc:
        raise BackupError(
            f"refusing to restore while the daemon runs (pid {exc.pid} holds "
            f"{state / LOCK_NAME}); stop it first (atarictl shutdown or systemctl stop "
            "atari-supervisor)",
            "daemon_running",
        ) from None
    with lock:
        recovered = recover_interrupted_restore(state)
        if recovered:
            print(f"atarictl: {recovered}", file=sys.stderr)
        return _restore_locked(state, archive, manifest, now)


def _check_db(db: Path, archive: Path) -> None:
    """The extracted database is a whole SQLite file of a schema this daemon can open."""
    from daemon.store.schema import SCHEMA_VERSION

    try:
        conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True)
        try:
            (ok,) = conn.execute("PRAGMA integrity_check").fetchone()
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            row = (
                conn.execute("SELECT version FROM schema_version").fetchone()
                if "schema_version" in tables
                else None
            )
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(
            f"{archive}: {DB_NAME} cannot be read as SQLite ({exc}); refusing the archive",
            "bad_archive",
        ) from None
    if ok != "ok":
        raise BackupError(f"{archive}: database fails integrity_check ({ok})", "bad_archive")
    version = row[0] if row else None
    if type(version) is not int:
        raise BackupError(
            f"{archive}: {DB_NAME} is not an atari-supervisor database (no schema version); "
            "refusing the archive",
            "bad_archive",
        )
    if version > SCHEMA_VERSION:
        raise BackupError(
            f"{archive}: {DB_NAME} has schema version {version}, newer than this "
            f"atari-supervisor understands ({SCHEMA_VERSION}); upgrade atari-supervisor first",
            "bad_archive",
        )


def _load_postgres(url: str, staged: Path, previous: Path) -> None:
    """The current server rows saved to ``previous``, then the staged (migrated) file's rows
    loaded in their place, in one transaction."""
    from daemon.store import Store, StoreError
    from daemon.store.portable import copy_to_sqlite, load_from_sqlite

    try:
        Store.open(staged).close()  # an older archive: its file migrated to this schema first
        target = Store.open(url)
        copy_to_sqlite(target.engine, previous)
        load_from_sqlite(staged, target.engine)
    except StoreError as exc:
        raise BackupError(str(exc), "no_database") from None


def _restore_locked(
    state: Path, archive: Path, manifest: dict[str, Any], now: float
) -> dict[str, Any]:
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=state))
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = state / f"{ASIDE_PREFIX}{stamp}"
    n = 1
    while os.path.lexists(aside):
        # Two restores within one second: never rename the current state over the kept copy
        # of an earlier one (a file rename replaces silently; that copy would be lost).
        n += 1
        aside = state / f"{ASIDE_PREFIX}{stamp}-{n}"
    journaled = False
    try:
        _walk(archive, stage)  # second pass writes and re-hashes what lands on disk
        _check_db(stage / DB_NAME, archive)
        (stage / RUNS_NAME).mkdir(exist_ok=True)
        from daemon.store.postgres import url_of_state_dir

        pg_url = url_of_state_dir(state)
        if pg_url is not None:
            aside.mkdir()
            _load_postgres(pg_url, stage / DB_NAME, aside / DB_NAME)
        # Old WAL sidecars must go with the old database, or SQLite would replay them into ours.
        # lexists: a (dangling) symlink is moved aside too, never written through.
        swapped = (DB_NAME, RUNS_NAME) if pg_url is None else (RUNS_NAME,)
        swap_names = SWAP_NAMES if pg_url is None else (RUNS_NAME,)
        renames = [
            (name, f"{aside.name}/{name}") for name in swap_names if os.path.lexists(state / name)
        ]
        renames += [(f"{stage.name}/{name}", name) for name in swapped]
        if len(renames) > len(swapped) and not aside.exists():
            aside.mkdir()
        intent = {
            "format": INTENT_FORMAT,
            "archive": str(archive),
            "started_at": now,
            "pid": os.getpid(),
            "stage": stage.name,
            "aside": aside.name,
            "renames": renames,
        }
        _write_intent(state, intent)
        journaled = True
        done = 0
        try:
            for src, dst in renames:
                _rename(state, src, dst)
                done += 1
        except BaseException:
            # An error (not a crash) mid-swap: move everything back, as it was before.
            try:
                for src, dst in reversed(renames[:done]):
                    _rename(state, dst, src)
            except OSError:
                raise  # the intent stays: the next restore or daemon start finishes the swap
            _finish(state, stage, aside)
            journaled = False
            raise
        _finish(state, stage, aside)
        journaled = False
    finally:
        if not journaled:
            shutil.rmtree(stage, ignore_errors=True)
            with contextlib.suppress(OSError):
                aside.rmdir()  # only when empty: nothing was set aside
    return {
        "path": str(archive),
        "state_dir": str(state),
        "files": len(manifest["files"]),
        "games": manifest.get("games", []),
        "created_at": manifest.get("created_at"),
        "previous": str(aside) if aside.exists() else None,
    }


# --------------------------------------------------------------------- the restore's journal
#
# The swap is a few renames inside the state dir. Before the first, the planned renames are
# written to INTENT_NAME (fsynced, and the dir fsynced); after each rename both dirs are
# fsynced; the intent is removed last. A crash at any point leaves the intent and a prefix of
# the renames done, and recover_interrupted_restore() finishes the rest forward. The intent is
# only written once the staged data has been extracted, re-hashed and checked, so it is
# complete; only if a staged item has gone missing are the done renames undone instead.

INTENT_NAME = "restore-intent.json"
INTENT_FORMAT = "atari-supervisor-restore-intent-1"
STAGE_PREFIX = ".restore-"
ASIDE_PREFIX = "pre-restore-"
SWAP_NAMES = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", RUNS_NAME)
MAX_INTENT_BYTES = 64 * 1024


def _rename(state: Path, src: str, dst: str) -> None:
    os.rename(state / src, state / dst)
    for d in {(state / src).parent, (state / dst).parent}:
        fsync_dir(d)


def _write_intent(state: Path, intent: dict[str, Any]) -> None:
    path = state / INTENT_NAME
    tmp = state / f".{INTENT_NAME}.tmp{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(json.dumps(intent, indent=1).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # os.replace, not os.rename: the crash tests count the swap's renames
    fsync_dir(state)


def _finish(state: Path, stage: Path, aside: Path) -> None:
    """The swap is complete (or wholly undone): drop the stage, then the intent."""
    if stage.is_symlink():
        stage.unlink()
    else:
        shutil.rmtree(stage, ignore_errors=True)
    with contextlib.suppress(OSError):
        aside.rmdir()  # only when empty: nothing was set aside
    with contextlib.suppress(FileNotFoundError):
        (state / INTENT_NAME).unlink()
    fsync_dir(state)


def _read_intent(path: Path) -> dict[str, Any]:
    def bad(why: str) -> BackupError:
        return BackupError(
            f"{path}: {why}; not a restore intent atarictl wrote: check atari.db and runs/ in "
            f"{path.parent} by hand (the previous state is in {ASIDE_PREFIX}*), then remove it",
            "bad_intent",
        )

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise bad(f"cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_INTENT_BYTES + 1)
    try:
        intent = json.loads(data)
    except (ValueError, RecursionError):
        raise bad("not JSON") from None
    if not isinstance(intent, dict) or intent.get("format") != INTENT_FORMAT:
        raise bad("unknown format")
    stage, aside, renames = intent.get("stage"), intent.get("aside"), intent.get("renames")
    if not (isinstance(stage, str) and stage.startswith(STAGE_PREFIX) and "/" not in stage):
        raise bad(f"bad stage {stage!r:.60}")
    if not (isinstance(aside, str) and aside.startswith(ASIDE_PREFIX) and "/" not in aside):
        raise bad(f"bad aside dir {aside!r:.60}")
    if stage in (".", "..") or aside in (".", ".."):
        raise bad("bad dir name")
    allowed = set(SWAP_NAMES)
    allowed |= {f"{d}/{n}" for d in (stage, aside) for n in SWAP_NAMES}
    if not isinstance(renames, list) or not all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) and x in allowed for x in r)
        for r in renames
    ):
        raise bad(f"a rename outside {path.parent} or of a file a restore never moves")
    if not isinstance(intent.get("archive"), str):
        raise bad("no archive")
    return intent


def _plan(state: Path, steps: list[tuple[str, str]]) -> str | None:
    """Why `steps`, done in order from the state on disk now, would not work; None if they do."""
    present = {n for s in steps for n in s if os.path.lexists(state / n)}
    for src, dst in steps:
        if src not in present:
            return f"{src} is missing"
        if dst in present:
            return f"{dst} is in the way"
        present.discard(src)
        present.add(dst)
    return None


def recover_interrupted_restore(state_dir: Path) -> str | None:
    """Finish a restore that crashed during its swap; call with the state dir's lock held
    (``lock_state_dir``), before anything opens ``atari.db`` or ``runs/``.

    None when there was nothing to do; otherwise one line saying what was done, to log. Raises
    BackupError (one line, naming the intent file and the fix) when the state dir matches neither
    a finished nor an undone swap: a daemon must not start on it then.

    A present intent is finished forward (the staged data was complete when it was written):
    ``atari.db`` and ``runs/`` end up both from the backup, the previous ones whole under
    ``pre-restore-*``. Only if a staged item is gone are the done renames undone instead, which
    leaves both as they were. A ``.restore-*`` staging dir without an intent (a restore that died
    before its swap) is removed."""
    state = Path(state_dir).absolute()
    path = state / INTENT_NAME
    if not os.path.lexists(path):
        if not state.is_dir():
            return None
        stale = sorted(p for p in state.iterdir() if p.name.startswith(STAGE_PREFIX))
        for p in stale:
            if p.is_symlink() or not p.is_dir():
                p.unlink()
            else:
                shutil.rmtree(p, ignore_errors=True)
        if not stale:
            return None
        return (
            f"removed {len(stale)} staging dir(s) of an interrupted restore that had not yet "
            f"touched {state}"
        )
    intent = _read_intent(path)
    archive = intent["archive"]
    stage, aside = state / intent["stage"], state / intent["aside"]
    steps = [(s, d) for s, d in intent["renames"]]
    done = 0
    while (
        done < len(steps)
        and not os.path.lexists(state / steps[done][0])
        and os.path.lexists(state / steps[done][1])
    ):
        done += 1
    rest = steps[done:]
    why_not = _plan(state, rest)
    if why_not is None:
        staged = [d for s, d in rest if s.startswith(f"{intent['stage']}/")]
        for name in staged:
            st = os.lstat(state / f"{intent['stage']}/{name}")
            want, kind = (stat.S_ISDIR, "dir") if name == RUNS_NAME else (stat.S_ISREG, "file")
            if not want(st.st_mode):
                why_not = f"{intent['stage']}/{name} is not a {kind}"
    if why_not is None:
        for src, dst in rest:
            _rename(state, src, dst)
        _finish(state, stage, aside)
        previous = f"the previous state is in {aside}" if aside.is_dir() else "there was none"
        return (
            f"finished an interrupted restore of {archive}: atari.db and runs/ are the backup's; "
            f"{previous}"
        )
    back = [(d, s) for s, d in reversed(steps[:done])]
    why_not_back = _plan(state, back)
    if why_not_back is not None:
        raise BackupError(
            f"{path}: an interrupted restore of {archive} can be neither finished ({why_not}) nor "
            f"undone ({why_not_back}); put atari.db and runs/ together by hand from {aside} or "
            f"{stage}, then remove {path}",
            "bad_intent",
        )
    for src, dst in back:
        _rename(state, src, dst)
    _finish(state, stage, aside)
    return (
        f"rolled back an interrupted restore of {archive} ({why_not}): atari.db and runs/ are as "
        "they were before it"
    )
