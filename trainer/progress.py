"""progress.json (the heartbeat the daemon reads) and episodes.jsonl (append-only)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from trainer.checkpoint import write_atomic

log = logging.getLogger("trainer")


class EpisodeStats:
    """Real-episode counters and the avg100 window; all of it goes into checkpoints."""

    def __init__(self) -> None:
        self.episodes = 0
        self.window: deque[float] = deque(maxlen=100)
        self.best: float | None = None
        self.recent: deque[tuple[float, int]] = deque()  # (unix time, episodes) for the rate

    @property
    def avg100(self) -> float | None:
        return sum(self.window) / len(self.window) if self.window else None

    def add(self, ret: float, now: float, best_needs: int) -> bool:
        """Count one episode; True when avg100 set a new best (over a full enough window)."""
        self.episodes += 1
        self.window.append(ret)
        self.recent.append((now, self.episodes))
        while len(self.recent) > 2 and now - self.recent[0][0] > 600:
            self.recent.popleft()
        avg = self.avg100
        if (
            len(self.window) >= best_needs
            and avg is not None
            and (self.best is None or avg > self.best)
        ):
            self.best = avg
            return True
        return False

    def episodes_per_hour(self) -> float:
        if len(self.recent) < 2:
            return 0.0
        (t0, e0), (t1, e1) = self.recent[0], self.recent[-1]
        return 3600.0 * (e1 - e0) / (t1 - t0) if t1 > t0 else 0.0

    def state(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "window": list(self.window), "best": self.best}

    def load(self, state: dict[str, Any]) -> None:
        self.episodes = int(state["episodes"])
        self.window = deque(state["window"], maxlen=100)
        self.best = state["best"]


class RunFiles:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.progress_path = run_dir / "progress.json"
        self.episodes_path = run_dir / "episodes.jsonl"
        self.ckpt_dir = run_dir / "checkpoints"
        self.best_path = run_dir / "best.pt"
        self._episodes_file = None

    def write_progress(self, fields: dict[str, Any]) -> None:
        data = dict(fields, pid=os.getpid(), updated_at=time.time())
        write_atomic(self.progress_path, (json.dumps(data, indent=1) + "\n").encode())

    def append_episode(self, record: dict[str, Any]) -> None:
        # Like a failed checkpoint or progress write (disk full), a failed log line must not
        # kill the run and lose everything since the last checkpoint: log it, reopen next time.
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
