"""Count a game's finished episodes between two times from its ``episodes.jsonl``.

The trainer appends one JSON line per real episode, ``{"t": unix time, "episode": n, ...}``, in
time order (``docs/architecture.md``, trainer contract). The episode rate behind ``status``'s
EPS/H and ETA (``daemon/status.py: episode_rate``) asks how many episodes finished in a few time
ranges; a long run's file holds hundreds of thousands of lines and ``status --watch`` asks every
2 s, so the file is binary-searched by byte offset (a few 4 KiB reads), never read whole.

Stdlib only: the daemon and atarictl's offline read use it alike. A torn or foreign line is
skipped, as the trainer's own resume skips it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO

from trainer.contract import EPISODES_FILE

_SCAN = 4096  # below this many bytes between the bounds, scan lines instead of bisecting


def _record(line: bytes) -> tuple[float, int] | None:
    try:
        rec = json.loads(line)
        t, n = rec["t"], rec["episode"]
    except (ValueError, TypeError, KeyError):
        return None
    if isinstance(t, bool) or not isinstance(t, int | float) or not isinstance(n, int):
        return None
    return float(t), n


class EpisodeLog:
    """One run dir's ``episodes.jsonl``; every call opens it afresh (the trainer appends)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / EPISODES_FILE

    def count(self, start: float, end: float) -> int:
        """Episodes that finished in (start, end]. Within one trainer run the episode numbers
        only grow, so a range inside one run is (last number - first number + 1); a resume may
        restart the numbers lower (a checkpoint older than the log), hence ranges per run."""
        if end < start:
            return 0
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                first = self._first_after_time(f, size, start)
                if first is None or first[1][0] > end:
                    return 0
                after = self._first_after_time(f, size, end)
                last = self._last_before(f, first[0], size if after is None else after[0])
        except OSError:
            return 0
        return max(0, last[1] - first[1][1] + 1) if last is not None else 0

    @staticmethod
    def _last_before(f: IO[bytes], lo: int, hi: int) -> tuple[float, int] | None:
        """The last valid record between offsets ``lo`` (a record's start) and ``hi`` (a line
        start): read backwards from ``hi`` in growing chunks, never before ``lo``."""
        back = 4096
        while True:
            start = max(lo, hi - back)
            f.seek(start)
            lines = f.read(hi - start).split(b"\n")
            if start > lo:
                lines = lines[1:]  # may begin inside a line
            for line in reversed(lines):
                rec = _record(line)
                if rec is not None:
                    return rec
            if start == lo:
                return None
            back *= 4  # only torn lines in this chunk: look further back

    @staticmethod
    def _first_after(f: IO[bytes], offset: int) -> tuple[int, tuple[float, int]] | None:
        """The first whole, valid record that starts at or after ``offset`` (a line start)."""
        f.seek(offset)
        pos = offset
        for line in f:
            rec = _record(line)
            if rec is not None:
                return pos, rec
            pos += len(line)
        return None

    def _first_after_time(
        self, f: IO[bytes], size: int, t: float
    ) -> tuple[int, tuple[float, int]] | None:
        """Offset and record of the first record with time > ``t``."""
        lo, hi = 0, size  # invariant: every record starting before lo has time <= t
        while hi - lo > _SCAN:
            mid = (lo + hi) // 2
            f.seek(mid)
            f.readline()  # to the next line start
            start = f.tell()
            got = self._first_after(f, start) if start < hi else None
            if got is None or got[1][0] > t:
                hi = mid
            else:
                lo = got[0] + 1
        # lo may sit inside a line whose record is not after t: skip to a line start.
        if lo > 0:
            f.seek(lo - 1)
            if f.read(1) != b"\n":
                f.readline()
            lo = f.tell()
        pos = lo
        f.seek(lo)
        for line in f:
            rec = _record(line)
            if rec is not None and rec[0] > t:
                return pos, rec
            pos += len(line)
        return None


def episode_counter(run_dir: Path) -> EpisodeLog | None:
    """The log of ``run_dir`` when it exists (a game that never ran has none)."""
    with contextlib.suppress(OSError):
        if (run_dir / EPISODES_FILE).is_file():
            return EpisodeLog(run_dir)
    return None
