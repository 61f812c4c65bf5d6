"""Real-episode statistics: the counters and the avg100 window behind progress.json."""

from __future__ import annotations

from collections import deque
from typing import Any


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
        # Plain Python numbers only: checkpoints load with weights_only=True.
        best = None if self.best is None else float(self.best)
        return {"episodes": int(self.episodes), "window": [float(x) for x in self.window],
                "best": best}  # fmt: skip

    def load(self, state: dict[str, Any]) -> None:
        self.episodes = int(state["episodes"])
        self.window = deque((float(x) for x in state["window"]), maxlen=100)
        self.best = None if state["best"] is None else float(state["best"])
