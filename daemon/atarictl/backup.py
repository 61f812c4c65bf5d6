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
was; an error during the swap rolls the moved items back, and a crash during it is finished
forward by `recover_interrupted_restore` (see "the restore's journal" below).

Backup opens run-dir files without following links and skips symlinks, non-regular files and
files with several hard links (one warning each). The manifest's sums are self-declared: they
catch accidents, not tampering (docs/cli.md, restore).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sqlite3
import stat
import sys
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
from daemon.paths import DB_NAME, LOCK_NAME, RUNS_NAME, Dirs, StateDirLocked, lock_state_dir
from trainer import contract

log = structlog.get_logger("daemon.atarictl.backup")

FORMAT = "atari-supervisor-backup"
VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # a backup's manifest is a few KiB; anything this big is not ours
SQLITE_MAGIC = b"SQLite format 3\x00"
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Read a run-dir file without following a final symlink, and without blocking on a planted FIFO.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def backup(paths: Dirs, out: Path, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    if not paths.db.is_file():
        raise BackupError(
            f"no database at {paths.db}; nothing to back up (pass the daemon's --state-dir)",
            "no_database",
        )
    if paths.db.is_symlink():
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
        _snapshot_db(paths.db, stage / DB_NAME)
        (stage / "runs").mkdir()
        games, warnings = _stage_runs(paths.runs_dir, stage)
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
        "warnings": warnings,
    }


# ---------------------------------------------------------------------------------- verify


def _unsafe(name: str) -> bool:
    p = PurePosixPath(name)
    return p.is_absolute() or ".." in p.parts or not p.parts or name.startswith("./")


def _safe_name(name: str) -> str:
    if _unsafe(name):
        raise BackupError(f"archive member {name!r} has an unsafe path; refusing the archive")
    return PurePosixPath(name).as_posix()


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
        if not member.isfile():
            raise BackupError(f"{archive}: {MANIFEST} is not a regular file; refusing the archive")
        if member.size > MAX_MANIFEST_BYTES:
            raise BackupError(
                f"{archive}: {MANIFEST} is {member.size} bytes, more than any backup's; "
                "not an atarictl backup",
                "bad_archive",
            )
        f = tar.extractfile(member)
        assert f is not None
        manifest = json.loads(f.read(MAX_MANIFEST_BYTES + 1))
    except (KeyError, AssertionError):
        raise BackupError(
            f"{archive}: no {MANIFEST}; not an atarictl backup", "bad_archive"
        ) from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BackupError(f"{archive}: damaged archive ({exc})", "bad_archive") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BackupError(
            f"{archive}: {MANIFEST} is not JSON ({str(exc)[:80]})", "bad_archive"
        ) from None
    _check_manifest(manifest, archive)
    return manifest


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_manifest(manifest: object, archive: Path) -> None:
    """The manifest is self-declared: check its shape so nothing below trips over a value."""
    if not isinstance(manifest, dict):
        raise BackupError(
            f"{archive}: {MANIFEST} is a JSON {type(manifest).__name__}, not an object; "
            "not an atarictl backup",
            "bad_archive",
        )
    fmt_, version = manifest.get("format"), manifest.get("version")
    if fmt_ != FORMAT or type(version) is not int or version != VERSION:
        raise BackupError(
            f"{archive}: manifest format {fmt_!r:.60} version {version!r:.20}; this atarictl "
            f"reads {FORMAT} version {VERSION}",
            "bad_archive",
        )

    def bad(what: str) -> BackupError:
        return BackupError(
            f"{archive}: {MANIFEST}: {what}; not a manifest atarictl wrote, refusing the archive",
            "bad_archive",
        )

    if not _number(manifest.get("created_at")):
        raise bad(f"created_at is not a number ({manifest.get('created_at')!r:.40})")
    games = manifest.get("games")
    if not isinstance(games, list) or not all(isinstance(g, str) for g in games):
        raise bad(f"games is not a list of names ({games!r:.40})")
    files = manifest.get("files")
    if not isinstance(files, dict) or DB_NAME not in files:
        raise BackupError(f"{archive}: manifest lists no {DB_NAME}", "bad_archive")
    for name, entry in files.items():
        if not isinstance(name, str) or _unsafe(name) or PurePosixPath(name).as_posix() != name:
            raise bad(f"files has an unsafe path {name!r:.80}")
        if not isinstance(entry, dict):
            raise bad(f"files[{name!r}] is not an object")
        size, digest = entry.get("size"), entry.get("sha256")
        if type(size) is not int or size < 0:
            raise bad(f"files[{name!r}]: size is not a whole number ({size!r:.40})")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise bad(f"files[{name!r}]: sha256 is not a sha256 hex digest ({digest!r:.70})")


def _hash_stream(f: IO[bytes], sink: IO[bytes] | None = None) -> tuple[str, int, bytes]:
    """(sha256, size, first bytes) of a stream, copying it to `sink` when given."""
    h = hashlib.sha256()
    n = 0
    head = b""
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        if len(head) < len(SQLITE_MAGIC):
            head += chunk[: len(SQLITE_MAGIC) - len(head)]
        n += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return h.hexdigest(), n, head


def _walk(archive: Path, dest: Path | None) -> dict[str, Any]:
    """Check every member against the manifest; with `dest`, also write the members there."""
    with _open(archive) as tar:
        manifest = _read_manifest(tar, archive)
        expected: dict[str, dict[str, Any]] = manifest["files"]
        seen: set[str] = set()
        manifests = 0
        try:
            for member in tar:
                name = _safe_name(member.name)
                if not member.isfile():
                    raise BackupError(
                        f"{archive}: member {name!r} is not a regular file; refusing the archive"
                    )
                if name == MANIFEST:
                    manifests += 1
                    if manifests > 1:
                        raise BackupError(f"{archive}: member {name!r} appears twice")
                    continue
                if name not in expected:
                    raise BackupError(f"{archive}: member {name!r} is not in the manifest")
                if name in seen:
                    raise BackupError(f"{archive}: member {name!r} appears twice")
                seen.add(name)
                f = tar.extractfile(member)
                assert f is not None
                if dest is None:
                    digest, size, head = _hash_stream(f)
                else:
                    target = dest / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    # A new file in our own fresh stage dir: never through a link, never over one.
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o666)  # fmt: skip
                    with os.fdopen(fd, "wb") as out:
                        digest, size, head = _hash_stream(f, out)
                        out.flush()
                        os.fsync(out.fileno())
                want = expected[name]
                if size != want["size"] or digest != want["sha256"]:
                    raise BackupError(
                        f"{archive}: {name} does not match its manifest checksum "
                        "(tampered or corrupt); refusing the archive",
                        "checksum",
                    )
                if name == DB_NAME and head != SQLITE_MAGIC:
                    raise BackupError(
                        f"{archive}: {DB_NAME} is not an SQLite database; not a backup atarictl "
                        "wrote, refusing the archive",
                        "bad_archive",
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
        # Old WAL sidecars must go with the old database, or SQLite would replay them into ours.
        # lexists: a (dangling) symlink is moved aside too, never written through.
        renames = [
            (name, f"{aside.name}/{name}") for name in SWAP_NAMES if os.path.lexists(state / name)
        ]
        renames += [(f"{stage.name}/{name}", name) for name in (DB_NAME, RUNS_NAME)]
        if len(renames) > 2:
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


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename(state: Path, src: str, dst: str) -> None:
    os.rename(state / src, state / dst)
    for d in {(state / src).parent, (state / dst).parent}:
        _fsync_dir(d)


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
    _fsync_dir(state)


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
    _fsync_dir(state)


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
