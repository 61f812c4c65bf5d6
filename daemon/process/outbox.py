"""Store writes that survive a failing store (a full disk, a database locked past its timeout).

The process manager's memory is the truth about its children: it holds the pids. The store is
the record of it. So a spawned process is tracked in memory first, and its store writes go
through an ``Outbox``: a write the store refuses waits, in order, and is retried before anything
newer on the next pass. Nothing is lost, the history keeps its order (a run's start before its
end), and no failing write can make the manager forget a process and spawn another one.

Game rows are snapshots, not history: a failed ``upsert_game`` only marks the game dirty and
its latest state is written once the store takes writes again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import structlog

from daemon.store import StoreError

log = structlog.get_logger("daemon.process")


class Outbox:
    def __init__(self) -> None:
        self._writes: deque[tuple[str, Callable[[], None]]] = deque()
        self.dirty: set[str] = set()  # games whose snapshot the store has not taken yet

    def __len__(self) -> int:
        return len(self._writes)

    def write(self, what: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` now, or after the writes still waiting (order is history's order)."""
        if self._writes or not self._try(what, fn):
            self._writes.append((what, fn))

    def flush(self) -> bool:
        """Retry waiting writes, oldest first; stop at the first the store still refuses.
        True when nothing waits any more."""
        while self._writes:
            what, fn = self._writes[0]
            if not self._try(what, fn, retry=True):
                return False
            self._writes.popleft()
        return True

    def _try(self, what: str, fn: Callable[[], None], retry: bool = False) -> bool:
        try:
            fn()
        except StoreError as e:
            if not retry:
                log.warning("store write failed; kept in memory and retried on the next pass",
                            write=what, waiting=len(self._writes) + 1, error=str(e))  # fmt: skip
            return False
        if retry:
            log.info("store write done after a retry", write=what, waiting=len(self._writes) - 1)
        return True
