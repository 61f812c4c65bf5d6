"""Per-game supervision: states (``states``), the queue and backoff (``manager``), the OS seam."""

from daemon.process.manager import ProcessManager, trainer_argv
from daemon.process.os_seam import OsSeam, Proc, RealOs
from daemon.process.states import After, Game, State

__all__ = ["After", "Game", "OsSeam", "Proc", "ProcessManager", "RealOs", "State", "trainer_argv"]
