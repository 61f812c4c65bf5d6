"""Per-game process states, supervisord-style (stdlib only, no I/O).

QUEUED    waiting for a free slot of the current level
STARTING  spawned; becomes RUNNING after staying up ``startsecs``
RUNNING   up for at least ``startsecs``
BACKOFF   crashed; waits ``delay`` before STARTING again (holds its slot, like supervisord)
STOPPING  SIGTERM sent to the process group; SIGKILL after ``stop_grace``
STOPPED   stopped by the operator; ``start`` brings it back
DONE      reached its target episodes
FATAL     gave up (crash storm or a config error exit); ``start`` clears it

Every method that changes ``state`` is a transition named in a ``# FROM -> TO`` comment; the
manager (``daemon/process/manager.py``) calls them and does the I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class State(StrEnum):
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    DONE = "DONE"
    FATAL = "FATAL"


# States that hold one of the level's slots.
ACTIVE = frozenset({State.STARTING, State.RUNNING, State.BACKOFF, State.STOPPING})
# States with a live child process.
LIVE = frozenset({State.STARTING, State.RUNNING, State.STOPPING})


class After(StrEnum):
    """What a STOPPING game becomes once its process has exited."""

    STOPPED = "STOPPED"  # operator stop
    # level change / shutdown / operator start while stopping: resume from the checkpoint
    QUEUED = "QUEUED"
    RESTART = "RESTART"  # frozen heartbeat or operator restart: start again at once


@dataclass
class BackoffPolicy:
    initial: float
    factor: float
    max: float
    reset_after: float
    storm_crashes: int
    storm_window: float
    max_no_progress_restarts: int = 10


@dataclass
class RunRef:
    """A ``runs`` row that may not be written yet (the store refused it, see ``outbox.py``):
    its id arrives when ``run_started`` succeeds; ``run_ended``, queued after it, reads it."""

    id: int | None = None


@dataclass
class Game:
    name: str
    target: int
    index: int  # position in the profile: seed offset and queue tie-break
    state: State = State.QUEUED
    proc: Any = None  # the OS seam's handle while a process lives
    run: RunRef | None = None  # the live process's run row
    started_mono: float | None = None
    started_wall: float | None = None
    retry_at: float | None = None
    delay: float | None = None  # the next backoff wait; None = policy.initial
    crashes: deque[float] = field(default_factory=deque)  # monotonic times of recent crashes
    stop_deadline: float | None = None
    killed: bool = False
    after: After | None = None
    stop_reason: str = ""
    reason: str = ""  # why the last state change happened (for status and FATAL)
    progress: dict[str, Any] = field(default_factory=dict)
    level: str | None = None  # level the live process was started with
    # The manager's level epoch at the spawn: a live process of an older epoch is still
    # draining a level change (same level name and edited settings included).
    epoch: int = 0
    # Episodes when the live process started, and restarts in a row that added none: a crash
    # loop too slow for the storm window still ends (``max_no_progress_restarts``).
    episodes_at_start: int = 0
    no_progress_restarts: int = 0
    gpu: int | None = None  # CUDA device of the live process on a multi-GPU box

    # -------------------------------------------------------------- transitions

    def start(
        self, proc: Any, run: RunRef, mono: float, wall: float, level: str, epoch: int
    ) -> State:
        assert self.state in (State.QUEUED, State.BACKOFF) and self.proc is None, self.state
        prev = self.state
        # QUEUED -> STARTING, BACKOFF -> STARTING
        self.state = State.STARTING
        self.proc, self.run, self.started_mono, self.level = proc, run, mono, level
        self.epoch = epoch
        self.started_wall = wall
        self.retry_at, self.stop_deadline, self.killed, self.after = None, None, False, None
        self.episodes_at_start = int(self.progress.get("episodes") or 0)
        return prev

    def became_running(self) -> None:
        assert self.state is State.STARTING
        # STARTING -> RUNNING
        self.state = State.RUNNING
        self.reason = "stayed up startsecs"

    def maybe_reset_backoff(self, mono: float, policy: BackoffPolicy) -> bool:
        """Healthy for ``reset_after``: the next crash waits ``initial`` again."""
        healthy = self.started_mono is not None and mono - self.started_mono >= policy.reset_after
        if self.state is State.RUNNING and healthy and self.delay is not None:
            self.delay = None
            return True
        return False

    def count_restart(self, policy: BackoffPolicy) -> str | None:
        """One more restart of this game (a crash or a frozen heartbeat): the FATAL reason when
        it is the ``max_no_progress_restarts``-th in a row without a new episode, else None."""
        episodes = int(self.progress.get("episodes") or 0)
        if episodes > self.episodes_at_start:
            self.no_progress_restarts = 0
            return None
        self.no_progress_restarts += 1
        if self.no_progress_restarts < policy.max_no_progress_restarts:
            return None
        return (
            f"gave up: entered FATAL, {self.no_progress_restarts} restarts in a row without a new"
            f" episode (still at episode {episodes}; backoff.max_no_progress_restarts="
            f"{policy.max_no_progress_restarts})"
        )

    def crashed(self, mono: float, policy: BackoffPolicy, reason: str) -> State:
        """The process died on its own; BACKOFF, or FATAL when crashes storm or bring no
        progress."""
        assert self.state in (State.STARTING, State.RUNNING, State.QUEUED, State.BACKOFF)
        self._exited()
        if (stuck := self.count_restart(policy)) is not None:
            # STARTING -> FATAL, RUNNING -> FATAL (QUEUED/BACKOFF -> FATAL: spawn failed)
            self.state = State.FATAL
            self.reason = f"{stuck}; last: {reason}"
            return self.state
        self.crashes.append(mono)
        while self.crashes and mono - self.crashes[0] > policy.storm_window:
            self.crashes.popleft()
        if len(self.crashes) >= policy.storm_crashes:
            # STARTING -> FATAL, RUNNING -> FATAL (QUEUED/BACKOFF -> FATAL: spawn failed)
            self.state = State.FATAL
            self.reason = (
                f"gave up: entered FATAL, too many crashes (storm_crashes={policy.storm_crashes}"
                f" in storm_window={policy.storm_window:g}s); last: {reason}"
            )
            return self.state
        wait = policy.initial if self.delay is None else self.delay
        self.delay = min(wait * policy.factor, policy.max)
        self.retry_at = mono + wait
        # STARTING -> BACKOFF, RUNNING -> BACKOFF (QUEUED/BACKOFF -> BACKOFF: spawn failed)
        self.state = State.BACKOFF
        self.reason = f"{reason}; restart in {wait:g}s (backoff.initial={policy.initial:g}s"
        self.reason += f" x factor={policy.factor:g}, max={policy.max:g}s)"
        return self.state

    def fatal(self, reason: str) -> None:
        """A final trainer exit (trainer/contract.py: fatal_reason): retrying cannot help."""
        assert self.state in (State.STARTING, State.RUNNING), self.state
        self._exited()
        # STARTING -> FATAL, RUNNING -> FATAL
        self.state = State.FATAL
        self.reason = f"gave up: entered FATAL, {reason}, then atarictl start"

    def restored(self, stored: State, reason: str) -> None:
        """At daemon start: an operator's STOPPED and a FATAL survive a restart; every other
        stored state (the daemon died or stopped under it) queues again, to resume."""
        assert self.state is State.QUEUED and self.proc is None, self.state
        if stored in (State.STOPPED, State.FATAL):
            # QUEUED -> STOPPED, QUEUED -> FATAL (as stored)
            self.state = stored
        # otherwise QUEUED stays QUEUED
        self.reason = reason

    def done(self, reason: str) -> None:
        self._exited()
        # STARTING -> DONE, RUNNING -> DONE, STOPPING -> DONE, QUEUED -> DONE (restored)
        self.state = State.DONE
        self.reason = reason

    def stopping(self, mono: float, grace: float, after: After, reason: str) -> None:
        assert self.state in LIVE, self.state
        # STARTING -> STOPPING, RUNNING -> STOPPING
        self.state = State.STOPPING
        self.stop_deadline = mono + grace
        self.after, self.stop_reason, self.reason = after, reason, reason

    def stopped_without_process(self, after: After, reason: str) -> None:
        """Stop a game that has no process (QUEUED/BACKOFF/FATAL)."""
        self.retry_at = None
        # QUEUED -> STOPPED, BACKOFF -> STOPPED/QUEUED, FATAL -> STOPPED
        self.state = State.STOPPED if after is After.STOPPED else State.QUEUED
        self.reason = reason

    def exited_while_stopping(self, policy: BackoffPolicy | None = None) -> State:
        """The stopped process is gone: become what the stop was for. ``policy`` is given for a
        restart of a frozen trainer, which counts toward ``max_no_progress_restarts``."""
        assert self.state is State.STOPPING
        after = self.after
        self._exited()
        if policy is not None and (stuck := self.count_restart(policy)) is not None:
            # STOPPING -> FATAL (a frozen trainer restarted too often without progress)
            self.state = State.FATAL
            self.reason = f"{stuck}; last: {self.stop_reason}"
            return self.state
        if after is After.STOPPED:
            # STOPPING -> STOPPED
            self.state = State.STOPPED
        else:
            # STOPPING -> QUEUED (RESTART starts it again at once from QUEUED)
            self.state = State.QUEUED
        return self.state

    def requeue(self, reason: str) -> None:
        """Operator ``start`` on STOPPED/FATAL, or a raised target on DONE."""
        assert self.state in (State.STOPPED, State.FATAL, State.DONE, State.QUEUED), self.state
        # STOPPED -> QUEUED, FATAL -> QUEUED, DONE -> QUEUED (QUEUED stays QUEUED)
        self.state = State.QUEUED
        self.crashes.clear()
        self.no_progress_restarts = 0
        self.delay, self.retry_at, self.reason = None, None, reason

    def _exited(self) -> None:
        self.proc, self.started_mono, self.started_wall, self.gpu = None, None, None, None
        self.stop_deadline, self.killed, self.after = None, False, None
