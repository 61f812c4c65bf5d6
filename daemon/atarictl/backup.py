"""`atarictl backup` and `atarictl restore`: a verified tar.gz of the state that matters.

Archive layout (all paths relative, no links):
    manifest.json                 format, version, created_at, files {path: {size, sha256}}
    atari.db                      consistent snapshot made with sqlite3's online backup API
    models.json                   the model registry export (see `atarictl models`)
    runs/<Game>/progress.json, episodes.jsonl, best.pt, checkpoints/ckpt-*.pt

Backup copies every file into a staging dir first and checksums the staged copy, so the bytes
listed in the manifest are exactly the bytes archived even while trainers keep writing. The
archive is written as `PATH.partial`, re-read and verified member by member, then renamed.

Restore verifies the whole archive against its manifest before touching anything, extracts into
a staging dir inside the state dir (same filesystem, so renames are atomic), checks the hashes
again on disk, and only then swaps `atari.db` and `runs/` into place; the previous ones are kept
under `<state-dir>/pre-restore-<stamp>/`. Any failure before the swap leaves the state dir as it
was; a failure during the swap rolls the moved items back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import tarfile
import tempfile
import time
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Any

import psutil
import structlog

from daemon.atarictl.client import Client, CtlError
from daemon.atarictl.offline import models as registry_rows
from daemon.paths import DB_NAME, LOCK_NAME, Dirs, StateDirLocked, lock_state_dir
from trainer import contract

log = structlog.get_logger("daemon.atarictl.backup")

FORMAT = "atari-supervisor-backup"
VERSION = 1
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class BackupError(CtlError):
    """An archive that cannot be trusted, or a restore that must not proceed."""

    exit_code = 6


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


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


def _stage_run(run: Path, stage: Path) -> list[str]:
    """Copy one game's run dir into the stage; returns warnings for skipped files."""
    warnings: list[str] = []
    out = stage / "runs" / run.name
    (out / contract.CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    for name in contract.RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(run / name, out / name)
    ep = out / contract.EPISODES_FILE
    if ep.is_file():
        # The trainer appends while we copy: drop a torn last line rather than archive it.
        data = ep.read_bytes()
        if data and not data.endswith(b"\n"):
            ep.write_bytes(data[: data.rfind(b"\n") + 1])
    ckpts = (run / contract.CHECKPOINT_DIR).glob("*.pt")
    for ckpt in sorted(p for p in ckpts if contract.CHECKPOINT_NAME.match(p.name)):
        dest = out / contract.CHECKPOINT_DIR / ckpt.name
        try:
            shutil.copyfile(ckpt, dest)
        except FileNotFoundError:
            continue  # rotated away by the trainer between listing and copying
        if not _checkpoint_ok(dest):
            dest.unlink()
            warnings.append(f"{ckpt}: checksum mismatch, left out of the backup")
    return warnings


def default_backup_path(now: float) -> Path:
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(f"atari-backup-{stamp}.tar.gz")


def backup(paths: Dirs, out: Path, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    if not paths.db.is_file():
        raise BackupError(
            f"no database at {paths.db}; nothing to back up (pass the daemon's --state-dir)",
            "no_database",
        )
    out = out.absolute()
    if out.exists():
        raise BackupError(f"{out} already exists; pick another PATH or remove it", "exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".atari-backup-", dir=out.parent))
    partial = out.with_name(out.name + ".partial")
    try:
        _snapshot_db(paths.db, stage / DB_NAME)
        warnings: list[str] = []
        games = []
        if paths.runs_dir.is_dir():
            for run in sorted(p for p in paths.runs_dir.iterdir() if p.is_dir()):
                warnings += _stage_run(run, stage)
                games.append(run.name)
        registry = registry_rows(stage / DB_NAME, paths.runs_dir)
        for r in registry:
            # Paths inside the archive, so the export stays meaningful after a restore elsewhere.
            with contextlib.suppress(ValueError):
                r["path"] = str(Path(r["path"]).relative_to(paths.state_dir))
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
        with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
            tar.add(stage / MANIFEST, arcname=MANIFEST)
            for rel in files:
                tar.add(stage / rel, arcname=rel, recursive=False)
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        verify(partial)  # read back what was written, not what we meant to write
        os.replace(partial, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    total = sum(f["size"] for f in files.values())
    return {
        "path": str(out),
        "files": len(files),
        "bytes": total,
        "archive_bytes": out.stat().st_size,
        "games": games,
        "warnings": warnings,
    }


# ---------------------------------------------------------------------------------- verify


def _safe_name(name: str) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or name.startswith("./"):
        raise BackupError(f"archive member {name!r} has an unsafe path; refusing the archive")
    return p.as_posix()


def _open(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:gz")
    except FileNotFoundError:
        raise BackupError(f"{archive}: no such file", "not_found") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{archive}: not a readable tar.gz ({exc})", "bad_archive") from None


def _read_manifest(tar: tarfile.TarFile, archive: Path) -> dict[str, Any]:
    try:
        member = tar.getmember(MANIFEST)
        f = tar.extractfile(member)
        assert f is not None
        manifest = json.loads(f.read())
    except (KeyError, AssertionError):
        raise BackupError(
            f"{archive}: no {MANIFEST}; not an atarictl backup", "bad_archive"
        ) from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BackupError(f"{archive}: damaged archive ({exc})", "bad_archive") from None
    except ValueError as exc:
        raise BackupError(f"{archive}: {MANIFEST} is not JSON ({exc})", "bad_archive") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BackupError(
            f"{archive}: manifest format {manifest.get('format')!r} version "
            f"{manifest.get('version')!r}; this atarictl reads {FORMAT} version {VERSION}",
            "bad_archive",
        )
    if not isinstance(manifest.get("files"), dict) or DB_NAME not in manifest["files"]:
        raise BackupError(f"{archive}: manifest lists no {DB_NAME}", "bad_archive")
    return manifest


def _hash_stream(f: IO[bytes], sink: IO[bytes] | None = None) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        n += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return h.hexdigest(), n


def _walk(archive: Path, dest: Path | None) -> dict[str, Any]:
    """Check every member against the manifest; with `dest`, also write the members there."""
    with _open(archive) as tar:
        manifest = _read_manifest(tar, archive)
        expected: dict[str, dict[str, Any]] = manifest["files"]
        seen: set[str] = set()
        try:
            for member in tar:
                name = _safe_name(member.name)
                if name == MANIFEST:
                    continue
                if not member.isfile():
                    raise BackupError(
                        f"{archive}: member {name!r} is not a regular file; refusing the archive"
                    )
                if name not in expected:
                    raise BackupError(f"{archive}: member {name!r} is not in the manifest")
                if name in seen:
                    raise BackupError(f"{archive}: member {name!r} appears twice")
                seen.add(name)
                f = tar.extractfile(member)
                assert f is not None
                if dest is None:
                    digest, size = _hash_stream(f)
                else:
                    target = dest / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "wb") as out:
                        digest, size = _hash_stream(f, out)
                        out.flush()
                        os.fsync(out.fileno())
                want = expected[name]
                if size != want.get("size") or digest != want.get("sha256"):
                    raise BackupError(
                        f"{archive}: {name} does not match its manifest checksum "
                        "(tampered or corrupt); refusing the archive",
                        "checksum",
                    )
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BackupError(f"{archive}: damaged archive ({exc})", "bad_archive") from None
        missing = sorted(set(expected) - seen)
        if missing:
            raise BackupError(f"{archive}: manifest lists {missing[0]} but the archive lacks it")
    return manifest


def verify(archive: Path) -> dict[str, Any]:
    """Raise BackupError unless every file matches the manifest; returns the manifest."""
    return _walk(Path(archive), None)


# --------------------------------------------------------------------------------- restore


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
        return _restore_locked(state, archive, manifest, now)


def _restore_locked(
    state: Path, archive: Path, manifest: dict[str, Any], now: float
) -> dict[str, Any]:
    stage = Path(tempfile.mkdtemp(prefix=".restore-", dir=state))
    moved: list[tuple[Path, Path]] = []  # (where it is now, where it came from)
    placed: list[Path] = []
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = state / f"pre-restore-{stamp}"
    n = 1
    while aside.exists():
        # Two restores within one second: never rename the current state over the kept copy
        # of an earlier one (a file rename replaces silently; that copy would be lost).
        n += 1
        aside = state / f"pre-restore-{stamp}-{n}"
    try:
        _walk(archive, stage)  # second pass writes and re-hashes what lands on disk
        conn = sqlite3.connect(stage / DB_NAME)
        try:
            (ok,) = conn.execute("PRAGMA integrity_check").fetchone()
        finally:
            conn.close()
        if ok != "ok":
            raise BackupError(f"{archive}: database fails integrity_check ({ok})", "bad_archive")
        (stage / "runs").mkdir(exist_ok=True)
        # Old WAL sidecars must go with the old database, or SQLite would replay them into ours.
        old = [state / n for n in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", "runs")]
        for item in old:
            if item.exists():
                aside.mkdir(exist_ok=True)
                os.rename(item, aside / item.name)
                moved.append((aside / item.name, item))
        for name in (DB_NAME, "runs"):
            os.rename(stage / name, state / name)
            placed.append(state / name)
    except BaseException:
        for item in placed:
            with contextlib.suppress(OSError):
                os.rename(item, stage / item.name)  # back into the stage, removed below
        for now_at, came_from in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(now_at, came_from)
        with contextlib.suppress(OSError):
            aside.rmdir()
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {
        "path": str(archive),
        "state_dir": str(state),
        "files": len(manifest["files"]),
        "games": manifest.get("games", []),
        "created_at": manifest.get("created_at"),
        "previous": str(aside) if aside.exists() else None,
    }
