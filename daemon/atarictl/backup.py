"""`atarictl backup`: a verified tar.gz of the state that matters (reading one: `archive.py`;
putting one back: `restore.py`).

Archive layout (all paths relative, no links):
    manifest.json                 format, version, created_at, files {path: {size, sha256}}
    atari.db                      consistent snapshot made with sqlite3's online backup API;
                                  on a PostgreSQL store (store.url), the server's rows copied
                                  into this SQLite file in one snapshot (daemon/store/portable.py)
    models.json                   the model registry export (see `atarictl models`)
    profile-in-effect.yaml        the profile the daemon last ran under (the copy it keeps)
    runs/<Game>/progress.json, episodes.jsonl, best.pt, checkpoints/ckpt-*.pt
    logs/<Game>.log*              only with --with-logs: the per-game trainer logs

Backup copies every file into a staging dir first and checksums the staged copy, so the bytes
listed in the manifest are exactly the bytes archived even while trainers keep writing. The
archive is written as `PATH.partial`, re-read and verified member by member, then renamed.

Restore verifies the whole archive against its manifest before touching anything, extracts into
a staging dir inside the state dir (same filesystem, so renames are atomic), checks the hashes
again on disk, and only then swaps `atari.db` and `runs/` into place; the previous ones are kept
under `<state-dir>/pre-restore-<stamp>/`. Any failure before the swap leaves the state dir as it
was; an error during the swap rolls the moved items back, and a crash during it is finished
forward by `recover_interrupted_restore` (restore.py, "the restore's journal").

Backup opens run-dir files without following links and skips symlinks, non-regular files and
files with several hard links (one warning each). The manifest's sums are self-declared: they
catch accidents, not tampering (docs/cli.md, restore).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import shutil
import socket
import sqlite3
import stat
import tarfile
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import structlog

from daemon.atarictl.archive import (
    _CHUNK,
    FORMAT,
    MANIFEST,
    VERSION,
    BackupError,
    sha256_file,
    verify,
)
from daemon.atarictl.offline import models as registry_rows
from daemon.paths import DB_NAME, PROFILE_COPY_NAME, Dirs
from trainer import contract

log = structlog.get_logger("daemon.atarictl.backup")

# Read a run-dir file without following a final symlink, and without blocking on a planted FIFO.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _checkpoint_ok(path: Path) -> bool:
    """The trainer's checkpoint framing (trainer/contract.py) agrees with the payload."""
    try:
        with open(path, "rb") as f:
            contract.check_frame(f, path)
    except contract.NotFramed:
        return True  # not our format (e.g. a plain torch file): nothing to check
    except contract.BadFrame:
        return False
    return True


# ---------------------------------------------------------------------------------- backup


def _snapshot_db(db: Path, dest: Path) -> None:
    src = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(dest)
    try:
        # The online backup API copies a transactionally consistent image while the daemon
        # keeps writing; a plain file copy of a WAL database could miss or tear pages.
        src.backup(dst)
        # One self-contained file in the archive: no -wal sidecar to lose.
        dst.execute("PRAGMA journal_mode=DELETE")
        (result,) = dst.execute("PRAGMA integrity_check").fetchone()
        if result != "ok":
            raise BackupError(f"{db}: database snapshot failed integrity_check: {result}")
    finally:
        dst.close()
        src.close()


def _snapshot_postgres(url: str, dest: Path) -> None:
    from daemon.store import Store, StoreError
    from daemon.store.portable import copy_to_sqlite
    from daemon.store.sqlite import DatabaseFileError, check_file

    try:
        store = Store.open(url)
        copy_to_sqlite(store.engine, dest)
        check_file(dest)
    except (StoreError, DatabaseFileError) as exc:
        raise BackupError(str(exc), "no_database") from None


def _skip_symlink(path: Path) -> str:
    return (
        f"{path}: a symlink, not a regular file; left out of the backup (replace it with a "
        "regular file if it belongs in the backup)"
    )


def _open_run_file(dir_fd: int, name: str, shown: Path) -> int | str | None:
    """An fd of the regular file `name` in `dir_fd`, opened without following links; a warning
    (str) when the file must stay out of the backup; None when there is no such file.

    Backups often run as root while the run dirs belong to the daemon's user: a symlink or a hard
    link planted there (runs/Pong/best.pt -> /etc/shadow) must not pull another file into the
    archive. A file with more than one hard link may be such a file, so it is skipped too (the
    trainer never hard-links its files)."""
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _skip_symlink(shown)
        return f"{shown}: unreadable ({exc.strerror}); left out of the backup (check its mode)"
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return f"{shown}: not a regular file; left out of the backup (remove it)"
    if st.st_nlink > 1:
        os.close(fd)
        return (
            f"{shown}: has {st.st_nlink} hard links, so it may be a file from outside the state "
            "dir; left out of the backup (replace it with a copy of its own)"
        )
    return fd


def _copy_run_file(dir_fd: int, name: str, shown: Path, dest: Path) -> str | bool:
    """Copy one run-dir file into the stage: True when copied, False when absent, a warning
    when skipped. The copy keeps the file's mtime (the registry export reads it)."""
    got = _open_run_file(dir_fd, name, shown)
    if got is None or isinstance(got, str):
        return got or False
    with os.fdopen(got, "rb") as src, open(dest, "wb") as out:
        st = os.fstat(src.fileno())
        shutil.copyfileobj(src, out, _CHUNK)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
    return True


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _stage_run(runs_fd: int, name: str, runs_dir: Path, stage: Path) -> tuple[bool, list[str]]:
    """Copy one game's run dir into the stage: (staged, warnings for skipped files)."""
    run = runs_dir / name
    try:
        run_fd = os.open(name, _DIR, dir_fd=runs_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP or _is_link(name, runs_fd):
            return False, [
                f"{run}: a symlink, not a run dir of this state dir; left out of the backup "
                "(move the run dir itself into runs/)"
            ]
        return False, [f"{run}: unreadable ({exc.strerror}); left out of the backup"]
    warnings: list[str] = []
    out = stage / "runs" / name
    try:
        (out / contract.CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        for file in contract.RUN_FILES:
            got = _copy_run_file(run_fd, file, run / file, out / file)
            if isinstance(got, str):
                warnings.append(got)
        ep = out / contract.EPISODES_FILE
        if ep.is_file():
            # The trainer appends while we copy: drop a torn last line rather than archive it.
            data = ep.read_bytes()
            if data and not data.endswith(b"\n"):
                ep.write_bytes(data[: data.rfind(b"\n") + 1])
        ckpt_dir = run / contract.CHECKPOINT_DIR
        try:
            ckpt_fd = os.open(contract.CHECKPOINT_DIR, _DIR, dir_fd=run_fd)
        except FileNotFoundError:
            return True, warnings
        except OSError as exc:
            # O_DIRECTORY | O_NOFOLLOW on a symlink fails with ENOTDIR (Linux) or ELOOP.
            why = "a symlink" if _is_link(contract.CHECKPOINT_DIR, run_fd) else exc.strerror
            warnings.append(
                f"{ckpt_dir}: {why}, not a directory of this run dir; its checkpoints are left "
                "out of the backup"
            )
            return True, warnings
        try:
            names = sorted(n for n in os.listdir(ckpt_fd) if contract.CHECKPOINT_NAME.match(n))
            for ckpt in names:
                dest = out / contract.CHECKPOINT_DIR / ckpt
                # Absent: rotated away by the trainer between listing and copying.
                got = _copy_run_file(ckpt_fd, ckpt, ckpt_dir / ckpt, dest)
                if isinstance(got, str):
                    warnings.append(got)
                elif got and not _checkpoint_ok(dest):
                    dest.unlink()
                    warnings.append(f"{ckpt_dir / ckpt}: checksum mismatch, left out of the backup")
        finally:
            os.close(ckpt_fd)
    finally:
        os.close(run_fd)
    return True, warnings


def _stage_runs(runs_dir: Path, stage: Path) -> tuple[list[str], list[str]]:
    """(games staged, warnings). runs/ itself may be a symlink the operator made (check_trusted
    checks its target); the entries inside it are never followed."""
    try:
        runs_fd = os.open(runs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    games: list[str] = []
    warnings: list[str] = []
    try:
        with os.scandir(runs_fd) as entries:
            names = sorted(
                e.name for e in entries if e.is_symlink() or e.is_dir(follow_symlinks=False)
            )
        for name in names:
            staged, warned = _stage_run(runs_fd, name, runs_dir, stage)
            warnings += warned
            if staged:
                games.append(name)
    finally:
        os.close(runs_fd)
    return games, warnings


def _stage_flat(src_dir: Path, names: list[str] | None, dest: Path) -> tuple[int, list[str]]:
    """Copy regular files of one directory (``names``, or every one) into ``dest``, without
    following links: (files copied, warnings)."""
    try:
        dir_fd = os.open(src_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return 0, []
    copied, warnings = 0, []
    try:
        if names is None:
            with os.scandir(dir_fd) as entries:
                names = sorted(e.name for e in entries if not e.is_dir(follow_symlinks=False))
        for name in names:
            dest.mkdir(parents=True, exist_ok=True)
            got = _copy_run_file(dir_fd, name, src_dir / name, dest / name)
            if isinstance(got, str):
                warnings.append(got)
            copied += got is True
    finally:
        os.close(dir_fd)
    return copied, warnings


def _create_partial(partial: Path) -> IO[bytes]:
    """PATH.partial, created new (never through a planted symlink or over a file); mode 0600:
    the archive holds the whole state."""
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
    except FileExistsError:
        raise BackupError(
            f"{partial} exists (left by an interrupted backup?); remove it or pick another PATH",
            "exists",
        ) from None
    return os.fdopen(fd, "wb")


def default_backup_path(now: float) -> Path:
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(f"atari-backup-{stamp}.tar.gz")


def backup(
    paths: Dirs, out: Path, now: float | None = None, *, with_logs: bool = False
) -> dict[str, Any]:
    from daemon.store.postgres import url_of_state_dir

    now = time.time() if now is None else now
    pg_url = url_of_state_dir(paths.state_dir)
    if pg_url is None and not paths.db.is_file():
        raise BackupError(
            f"no database at {paths.db}; nothing to back up (pass the daemon's --state-dir)",
            "no_database",
        )
    if pg_url is None and paths.db.is_symlink():
        raise BackupError(
            f"{paths.db}: is a symlink; backup reads only the state dir's own files (replace the "
            "link with the database file)",
            "symlink",
        )
    out = out.absolute()
    if out.exists():
        raise BackupError(f"{out} already exists; pick another PATH or remove it", "exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    stage = Path(tempfile.mkdtemp(prefix=".atari-backup-", dir=out.parent))
    try:
        archive_file = _create_partial(partial)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    try:
        if pg_url is None:
            _snapshot_db(paths.db, stage / DB_NAME)
        else:
            _snapshot_postgres(pg_url, stage / DB_NAME)
        (stage / "runs").mkdir()
        games, warnings = _stage_runs(paths.runs_dir, stage)
        # The state alone does not say what produced it: take the profile the daemon ran under.
        has_profile, warned = _stage_flat(paths.state_dir, [PROFILE_COPY_NAME], stage)
        warnings += warned
        logs = 0
        if with_logs:
            logs, warned = _stage_flat(paths.logs_dir, None, stage / "logs")
            warnings += warned
        # From the staged copies: the export must not read a file the backup left out.
        registry = registry_rows(stage / DB_NAME, stage / "runs")
        for r in registry:
            # Paths inside the archive, so the export stays meaningful after a restore elsewhere.
            for root in (paths.state_dir, stage):
                with contextlib.suppress(ValueError):
                    r["path"] = str(Path(r["path"]).relative_to(root))
                    break
        (stage / "models.json").write_text(json.dumps(registry, indent=1) + "\n")
        files = {
            p.relative_to(stage).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(stage.rglob("*"))
            if p.is_file()
        }
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "created_at": now,
            "host": socket.gethostname(),
            "source_state_dir": str(paths.state_dir.absolute()),
            "games": games,
            "files": files,
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        with archive_file, tarfile.open(fileobj=archive_file, mode="w:gz", compresslevel=6) as tar:
            tar.add(stage / MANIFEST, arcname=MANIFEST)
            for rel in files:
                tar.add(stage / rel, arcname=rel, recursive=False)
            tar.close()  # before the fsync: the gzip trailer must be on disk too
            archive_file.flush()
            os.fsync(archive_file.fileno())
        verify(partial)  # read back what was written, not what we meant to write
        os.replace(partial, out)
    finally:
        archive_file.close()
        shutil.rmtree(stage, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()  # ours: created above with O_EXCL
    total = sum(f["size"] for f in files.values())
    return {
        "path": str(out),
        "files": len(files),
        "bytes": total,
        "archive_bytes": out.stat().st_size,
        "games": games,
        "profile": PROFILE_COPY_NAME if has_profile else None,
        "logs": logs,
        "warnings": warnings,
    }


# ---------------------------------------------------------------------------------- verify
