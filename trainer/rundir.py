"""The run dir: its lock, its files (names from ``trainer/contract.py``) and atomic writes.

Standard library only, so the CLI can refuse a busy or unwritable run dir before torch loads.
A trainer holds an exclusive ``flock`` on ``trainer.lock`` for its whole life: a second trainer
on the same run dir is refused, and while the lock is held nobody else writes here, which is what
makes removing the temp files of a killed predecessor safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from trainer.args import UsageError
from trainer.contract import (
    BEST_FILE,
    CHECKPOINT_DIR,
    CHECKPOINT_NAME,
    EPISODES_FILE,
    FENCE_FILE,
    LOCK_FILE,
    PROGRESS_FILE,
    TEMP_NAME,
    ExitCode,
    dump_progress,
    temp_name,
)

log = logging.getLogger("trainer")


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".probe"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(
            f"atari-trainer: run dir {run_dir} is not writable ({reason}); "
            "fix its permissions or pass another --run-dir",
            ExitCode.RUN_DIR_UNWRITABLE,
        ) from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Fleet mode's fence (this process's run dir and fencing token), set once from --fence-token.
# A process-wide setting rather than an argument: every write into the run dir, whichever module
# makes it (progress, checkpoint, best.pt), goes through write_atomic, which checks it.
_fence: tuple[Path, int] | None = None


def set_fence(run_dir: Path, token: int | None) -> None:
    global _fence
    _fence = None if token is None else (run_dir, token)


def check_fence() -> None:
    """Raise UsageError(SUPERSEDED) when the run dir's fence holds a token newer than ours.

    Read just before each rename: a holder that was paused past its lease (SIGSTOP, a network
    partition) and resumes finds the new holder's token there and stops without writing. What
    it cannot stop is a rename already past this check when the new holder wrote the fence; the
    new holder's trainer takes seconds to start, far longer than that window (docs/fleet.md)."""
    if _fence is None:
        return
    run_dir, token = _fence
    try:
        text = (run_dir / FENCE_FILE).read_text().strip()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(
            f"atari-trainer: cannot read {run_dir / FENCE_FILE} ({exc.strerror}); not writing "
            "without knowing the fence", ExitCode.SUPERSEDED,
        ) from None  # fmt: skip
    newest = int(text) if text.isdigit() else None
    if newest is None or newest > token:
        raise UsageError(
            f"atari-trainer: superseded: {run_dir / FENCE_FILE} holds token {text!r:.40}, ours "
            f"is {token}; another holder owns this game now, exiting without writing",
            ExitCode.SUPERSEDED,
        )


def write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(path: Path, data: bytes, write: Callable[[int, bytes], None] = write_fd) -> None:
    """temp file -> fsync -> rename -> fsync dir. `write` is the seam tests use to fail writes."""
    tmp = path.with_name(temp_name(path.name, os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        check_fence()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class RunFiles:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.progress_path = run_dir / PROGRESS_FILE
        self.episodes_path = run_dir / EPISODES_FILE
        self.ckpt_dir = run_dir / CHECKPOINT_DIR
        self.best_path = run_dir / BEST_FILE
        self._episodes_file: IO[str] | None = None

    @classmethod
    @contextlib.contextmanager
    def locked(cls, run_dir: Path) -> Iterator[RunFiles]:
        """The run dir's files, locked until the block ends or the process dies (the kernel
        drops a flock with its last descriptor, so a SIGKILL leaves no stale lock)."""
        check_writable(run_dir)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            locked = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                if _fence is None:
                    raise UsageError(
                        f"atari-trainer: run dir {run_dir} is busy: another trainer (pid "
                        f"{holder}) holds {run_dir / LOCK_FILE}; stop it or pass another --run-dir",
                        ExitCode.RUN_DIR_BUSY,
                    ) from None
                # Fleet mode: a superseded holder that is paused (SIGSTOP, a hung host) keeps
                # its lock until it runs again, but the fence already stops it writing (it reads
                # our newer token before each rename), so the new holder goes on without it.
                locked = False
                log.warning("run dir lock held by pid %s, a superseded holder: going on "
                            "under fencing token %d (it writes nothing more)", holder,
                            _fence[1])  # fmt: skip
            if locked:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            files = cls(run_dir)
            if locked:  # else the temps may be the paused holder's, about to be dropped by it
                files.remove_stale_temps()
            try:
                yield files
            finally:
                files.close()
        finally:
            os.close(fd)

    def remove_stale_temps(self) -> list[Path]:
        """Temp files of a killed writer (SIGKILL between create and rename). Only called with
        the lock held: then no other writer can own them."""
        stale = []
        for folder, ours in ((self.run_dir, (PROGRESS_FILE, BEST_FILE)), (self.ckpt_dir, None)):
            with contextlib.suppress(FileNotFoundError):
                for p in folder.iterdir():
                    m = TEMP_NAME.match(p.name)
                    if m and (m["name"] in ours if ours else CHECKPOINT_NAME.match(m["name"])):
                        p.unlink(missing_ok=True)
                        stale.append(p)
        if stale:
            log.info("removed %d temp files of a killed writer: %s", len(stale),
                     ", ".join(p.name for p in stale))  # fmt: skip
        return stale

    def write_progress(self, fields: dict[str, Any]) -> None:
        data = dict(fields, pid=os.getpid(), updated_at=time.time())
        write_atomic(self.progress_path, dump_progress(data))

    def append_episode(self, record: dict[str, Any]) -> None:
        # Like a failed checkpoint or progress write (disk full), a failed log line must not
        # kill the run and lose everything since the last checkpoint: log it, reopen next time.
        check_fence()  # outside the try: superseded is not a failed write to shrug off
        try:
            if self._episodes_file is None:
                self._episodes_file = open(self.episodes_path, "a", buffering=1)  # noqa: SIM115
            self._episodes_file.write(json.dumps(record) + "\n")
        except OSError as exc:
            log.error("could not append to %s: %s", self.episodes_path, exc)
            if self._episodes_file is not None:
                with contextlib.suppress(OSError):
                    self._episodes_file.close()
                self._episodes_file = None

    def close(self) -> None:
        if self._episodes_file is not None:
            with contextlib.suppress(OSError):
                self._episodes_file.close()
            self._episodes_file = None
