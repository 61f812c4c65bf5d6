"""The stop flag, stdlib-only so the CLI can install it before torch and envpool are imported:
a SIGTERM in the first seconds of a start (a level change right after a spawn) must still mean
"checkpoint and exit 0", not death by signal 15."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StopFlag:
    """Signal handlers only record the signal; the loop decides when to stop."""

    signals: list[int] = field(default_factory=list)

    def __call__(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)

    @property
    def set(self) -> bool:
        return bool(self.signals)

    def install(self) -> StopFlag:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)
        return self
