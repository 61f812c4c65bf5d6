"""TensorBoard curves of one run, under ``<run-dir>/tb/``: ``tb/env`` on the env-step axis
(episodic return, length and avg100; env steps/s, updates/s, replay fill; the level's shape) and
``tb/learner`` on the update axis (loss, mean Q of the batch, epsilon, learning rate, gradient
norm). Two writers because TensorBoard has one step axis per run.

Writer: ``torch.utils.tensorboard.SummaryWriter`` (the ``tensorboard`` package). It is the
maintained writer next to the torch we already ship, and ``tensorboard`` is what reads the files
back anyway (the viewer, ``EventAccumulator`` in the tests); tensorboardX would be a second
implementation of the same format for no saving.

No duplicates after a resume: points wait in memory and go to the event files right after a
checkpoint is written (``commit``), so the files never hold a point beyond the newest checkpoint.
A resume, even after a SIGKILL, continues from that checkpoint's counters: both axes stay
monotonic, for every reader (``purge_step`` would rely on the reader honouring it). The cost is
that curves lag by up to ``--checkpoint-every``.

Never fatal: a full disk or an unwritable ``tb/`` logs one error and the curves stop for this
run; training goes on.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("trainer")

TB_DIR = "tb"
ENV_AXIS, LEARNER_AXIS = "env", "learner"
# Points kept while checkpoints fail (a full disk): the oldest go first, with one warning.
MAX_PENDING = 200_000
FLUSH_SECS = 10  # the writer thread's flush period: points are on disk this long after a commit
LEARNER_EVERY = 1.0  # seconds between learner samples: one device sync each, not one per update


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def now(self) -> float: ...


class Curves:
    """Collects scalar points cheaply in the loop; writes them at ``commit`` (after a checkpoint).
    ``enabled=False`` (``--no-tensorboard``) makes every method a no-op."""

    def __init__(self, run_dir: Path, clock: Clock, enabled: bool = True) -> None:
        self.dir = Path(run_dir) / TB_DIR
        self.clock = clock
        self.enabled = enabled
        self.pending: deque[tuple[str, str, float, int, float]] = deque()
        self.texts: list[tuple[str, str, int, float]] = []
        self._writers: dict[str, Any] | None = None
        self._dropped = False
        self._next_learner = 0.0
        self._last_tick: tuple[float, int, int] | None = None
        self._writer_cls: Any = None
        if enabled:
            # At start, not at the first checkpoint inside the loop: the import takes ~1 s.
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                self._fail(exc)
            else:
                self._writer_cls = SummaryWriter

    # ---------------------------------------------------------------- collecting (the loop)

    def _add(self, axis: str, tag: str, value: float, step: int) -> None:
        if len(self.pending) >= MAX_PENDING:
            self.pending.popleft()
            if not self._dropped:
                log.warning("tensorboard: %d points wait for a checkpoint; dropping the oldest",
                            MAX_PENDING)  # fmt: skip
                self._dropped = True
        self.pending.append((axis, tag, float(value), int(step), self.clock.now()))

    def episodes(self, finished: list[tuple[float, int]], avg100: list[float | None],
                 env_steps: int, frame_skip: int) -> None:  # fmt: skip
        """One point per finished real episode, at the env steps when it ended."""
        if not self.enabled:
            return
        for (ret, length), avg in zip(finished, avg100, strict=True):
            self._add(ENV_AXIS, "episode/return", ret, env_steps)
            self._add(ENV_AXIS, "episode/length", length * frame_skip, env_steps)
            if avg is not None:
                self._add(ENV_AXIS, "episode/avg100", avg, env_steps)

    def learner_due(self) -> bool:
        """Whether the loop should hand in this update's statistics (at most every second)."""
        if not self.enabled:
            return False
        mono = self.clock.monotonic()
        if mono < self._next_learner:
            return False
        self._next_learner = mono + LEARNER_EVERY
        return True

    def learner(self, updates: int, stats: dict[str, Any], epsilon: float, lr: float) -> None:
        """``stats``: this update's loss, q_mean and grad_norm (tensors or floats)."""
        if not self.enabled:
            return
        for name, value in stats.items():
            self._add(LEARNER_AXIS, f"learner/{name}", float(value), updates)
        self._add(LEARNER_AXIS, "learner/epsilon", epsilon, updates)
        self._add(LEARNER_AXIS, "learner/lr", lr, updates)

    def tick(self, env_steps: int, updates: int, replay_fill: float | None,
             num_envs: int, batch_size: int) -> None:  # fmt: skip
        """Rates since the last tick, replay fill, and the shape (a level change shows as a
        step in ``level/num_envs``). Called at the progress cadence."""
        if not self.enabled:
            return
        mono = self.clock.monotonic()
        if self._last_tick is not None:
            t0, s0, u0 = self._last_tick
            dt = mono - t0
            if dt > 0:
                self._add(ENV_AXIS, "speed/env_steps_per_s", (env_steps - s0) / dt, env_steps)
                self._add(ENV_AXIS, "speed/updates_per_s", (updates - u0) / dt, env_steps)
        self._last_tick = (mono, env_steps, updates)
        if replay_fill is not None:
            self._add(ENV_AXIS, "speed/replay_fill", replay_fill, env_steps)
        self._add(ENV_AXIS, "level/num_envs", num_envs, env_steps)
        self._add(ENV_AXIS, "level/batch_size", batch_size, env_steps)

    def level(self, text: str, env_steps: int) -> None:
        """The run's shape and algo as text, once per start (a resume at a new level adds one)."""
        if self.enabled:
            self.texts.append(("level", text, env_steps, self.clock.now()))

    # ---------------------------------------------------------------- writing (checkpoints)

    def _open(self) -> dict[str, Any]:
        if self._writers is None:
            # Filled one by one, so a failure closes the writers already made.
            self._writers = {}
            for axis in (ENV_AXIS, LEARNER_AXIS):
                # The writer's own thread writes and flushes (within FLUSH_SECS), so a commit
                # only queues: a queue long enough never blocks the loop on the disk.
                self._writers[axis] = self._writer_cls(
                    str(self.dir / axis), max_queue=MAX_PENDING, flush_secs=FLUSH_SECS
                )
        return self._writers

    def commit(self) -> None:
        """Hand every waiting point to the writer; called after each checkpoint is on disk. A
        write error of the writer's thread comes back here (or at ``close``) on the next call."""
        if not self.enabled or (not self.pending and not self.texts):
            return
        try:
            writers = self._open()
            for tag, text, step, wall in self.texts:
                writers[ENV_AXIS].add_text(tag, text, step, walltime=wall)
            self.texts.clear()
            while self.pending:
                axis, tag, value, step, wall = self.pending[0]
                writers[axis].add_scalar(tag, value, step, walltime=wall)
                self.pending.popleft()
        except Exception as exc:  # OSError, or the writer thread's error re-raised
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        log.error("tensorboard curves stop for this run (training goes on): %s: %s",
                  self.dir, exc)  # fmt: skip
        self.enabled = False
        self.pending.clear()
        self.texts.clear()
        self._close_quietly()

    def _close_quietly(self) -> None:
        writers, self._writers = self._writers, None
        for w in (writers or {}).values():
            try:
                w.close()
            except Exception as exc:  # already failed once and said so
                log.debug("tensorboard writer close: %s", exc)

    def close(self) -> None:
        """The end of a run: what waits is written only after a checkpoint (``commit``)."""
        if self.enabled and self._writers is not None:
            try:
                for w in self._writers.values():
                    w.close()
            except Exception as exc:
                self._fail(exc)
                return
            self._writers = None
