"""What both learners (``train.py``: DQN, ``pqn.py``: PQN) share around their loops: the clock,
the device, the epsilon schedule, the resume (checkpoint + config + scaling rule), the episode
records and the best-model export. The loops themselves stay top to bottom in their files."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from trainer import checkpoint, scaling, tb
from trainer.args import Args, resume_config, validate
from trainer.contract import ExitCode
from trainer.progress import EpisodeStats
from trainer.rundir import RunFiles

log = logging.getLogger("trainer")


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def now(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> float:
        return time.time()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def epsilon(args: Args, env_steps: int) -> float:
    frac = min(1.0, env_steps / args.eps_decay_steps)
    return args.eps_start + frac * (args.eps_end - args.eps_start)


@dataclasses.dataclass(frozen=True)
class Start:
    """The config a run goes on with, and the checkpoint it continues (None: a fresh run)."""

    args: Args
    state: dict[str, Any] | None
    path: Path | None
    scaled: tuple[str, ...]  # the fields the scaling rule set (recorded in every checkpoint)


def start(args: Args, files: RunFiles, given: frozenset[str] | None) -> Start:
    """Load the newest checkpoint, merge its config (``resume_config``), then let the scaling
    rule set every rule field that was neither given now nor given when the run started: a level
    change (a new num_envs x batch) then gets the new shape's values, while a value the user once
    chose stays. ``given=None`` (a direct caller built ``args`` on purpose): no rule."""
    try:
        loaded = checkpoint.load_newest(files.ckpt_dir)
    except checkpoint.NoValidCheckpoint as exc:
        if not args.allow_fresh:
            raise
        log.warning("--allow-fresh: starting from scratch; %s", exc)
        loaded = None
    state, path = loaded if loaded is not None else (None, None)
    was_scaled: set[str] = set()
    if state is not None:
        saved = state.get("config")
        args = resume_config(args, saved if isinstance(saved, dict) else {}, given, args.run_dir)
        raw = state.get("scaled")
        was_scaled = {str(x) for x in raw} if isinstance(raw, list | tuple) else set()
    if given is None:
        return Start(args, state, path, ())
    names = scaling.PQN_FIELDS if args.algo == "pqn" else scaling.DQN_FIELDS
    free = [n for n in names if n not in given and (state is None or n in was_scaled)]
    values = scaling.scale(
        scaling.reference_for(args.is_atari, args.algo), args.num_envs, args.batch_size, args.algo
    )
    changes = {n: values[n] for n in free if values[n] != getattr(args, n)}
    if changes:
        args = validate(dataclasses.replace(args, **changes))
    return Start(args, state, path, tuple(free))


def record_episodes(
    finished: list[tuple[float, int]],
    stats: EpisodeStats,
    files: RunFiles,
    now: float,
    env_steps: int,
    best_needs: int,
    frame_skip: int,
) -> bool:
    """Count real episodes and append them to episodes.jsonl; True when avg100 set a new best."""
    new_best = False
    for ret, length in finished:
        new_best = stats.add(ret, now, best_needs) or new_best
        record = {"t": now, "episode": stats.episodes, "return": ret,
                  "length": length * frame_skip, "env_steps": env_steps}  # fmt: skip
        files.append_episode(record)
    return new_best


def export_best(
    files: RunFiles,
    args: Args,
    weights: dict[str, torch.Tensor],
    score: float | None,
    stats: EpisodeStats,
    obs_shape: tuple[int, ...],
    num_actions: int,
) -> None:
    checkpoint.write_atomic(
        files.best_path,
        checkpoint.encode(
            {
                "q": weights,
                "avg100": score,
                "episodes": stats.episodes,
                "env_id": args.env_id,
                "obs_shape": obs_shape,
                "num_actions": num_actions,
                "config": args.to_dict(),
            }
        ),
    )


def snapshot(q: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in q.state_dict().items()}


def write_progress(
    files: RunFiles,
    args: Args,
    status: str,
    stats: EpisodeStats,
    env_steps: int,
    updates: int,
    last_ckpt_time: float | None,
    device: str,
    replay_size: int,
    learning_rate: float | None,
) -> None:
    """progress.json (fields in trainer/contract.py); a failed write is logged, never fatal."""
    try:
        files.write_progress(
            {
                "game": args.game,
                "status": status,
                "episodes": stats.episodes,
                "target_episodes": args.episodes,
                "env_steps": env_steps,
                "updates": updates,
                "episodes_per_hour": round(stats.episodes_per_hour(), 2),
                "best_return": stats.best,
                "avg100": stats.avg100,
                "epsilon": epsilon(args, env_steps),
                "last_checkpoint_time": last_ckpt_time,
                "num_envs": args.num_envs,
                "batch_size": args.batch_size,
                "device": device,
                "replay_size": replay_size,
                "learning_env_steps_per_sec": learning_rate,
            }
        )
    except OSError as exc:
        log.error("could not write %s: %s", files.progress_path, exc)


class Run:
    """The bookkeeping both loops share, so each loop file holds only its algorithm: episode
    statistics, the best weights and their export, checkpoints, progress and the stop checks.
    The loop owns its networks and counters and hands them in."""

    def __init__(
        self, begin: Start, files: RunFiles, clock: Clock, spec: Any, device: torch.device
    ) -> None:
        self.args, self.begin, self.files, self.clock = begin.args, begin, files, clock
        self.spec, self.device = spec, device
        self.stats = EpisodeStats()
        self.rng = np.random.default_rng(self.args.seed)
        torch.manual_seed(self.args.seed)
        self.best_weights: dict[str, torch.Tensor] | None = None
        # best.pt is exported after the checkpoint rename: a kill in between, or a failed
        # export, leaves it older than the restored best_weights. Re-export once on the first
        # checkpoint.
        self.best_written = False
        self.last_ckpt_time: float | None = None
        self.ckpt_failed = False
        self.best_needs = min(100, self.args.episodes)
        self.frame_skip = 4 if self.args.is_atari else 1
        self.t_start = clock.monotonic()
        self.curves = tb.Curves(self.args.run_dir, clock, self.args.tensorboard)
        # Logged here, once the run is sure to start: a refused start stays one line of stderr.
        if begin.scaled:
            a = self.args
            values = " ".join(f"{n}={getattr(a, n)}" for n in begin.scaled)
            log.info("scaling rule (%s %dx%d): %s", a.algo, a.num_envs, a.batch_size, values)

    def restore(self, load: Callable[[dict[str, Any]], dict[str, int]]) -> dict[str, int] | None:
        """Continue from the checkpoint ``start`` found: ``load(state)`` restores the loop's
        networks and optimizer and returns its counters; the rest is restored here. None for a
        fresh run. A checkpoint that is intact but cannot be continued from is FATAL, never a
        silent fresh start."""
        state, path = self.begin.state, self.begin.path
        if state is None:
            self._level_text(0)
            return None
        try:
            counters = load(state)
            self.last_ckpt_time = state["time"]
            self.stats.load(state["stats"])
            self.rng.bit_generator.state = state["rng"]["numpy"]
            torch.set_rng_state(state["rng"]["torch"])
            self.best_weights = state.get("best_weights")
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise checkpoint.unloadable(path, exc) from exc
        log.info(
            "resumed from %s: episodes=%d env_steps=%d updates=%d epsilon=%.4f",
            path.name if path else "?",
            self.stats.episodes,
            counters["env_steps"],
            counters["updates"],
            epsilon(self.args, counters["env_steps"]),
        )
        self._level_text(counters["env_steps"])
        return counters

    def _level_text(self, env_steps: int) -> None:
        a = self.args
        self.curves.level(f"{a.algo} num_envs={a.num_envs} batch_size={a.batch_size} "
                          f"device={self.device}", env_steps)  # fmt: skip

    def env_seed(self, env_steps: int) -> int:
        # Fresh env seeds on every resume, so a restarted run does not replay the same episodes.
        return (self.args.seed * 1_000_003 + env_steps) % 2**31

    def episodes(
        self, finished: list[tuple[float, int]], env_steps: int, q: torch.nn.Module
    ) -> None:
        if not finished:
            return
        now, new_best, avgs = self.clock.now(), False, []
        for one in finished:  # one at a time: the curve has each episode's avg100
            new_best = record_episodes([one], self.stats, self.files, now, env_steps,
                                       self.best_needs, self.frame_skip) or new_best  # fmt: skip
            avgs.append(self.stats.avg100)
        self.curves.episodes(finished, avgs, env_steps, self.frame_skip)
        if new_best:
            self.best_weights = snapshot(q)
            self.best_written = False

    def is_done(self) -> bool:
        """The target is reached: the episode count, or --stop-avg100 over a full window."""
        a, s = self.args, self.stats
        if s.episodes >= a.episodes:
            return True
        full = len(s.window) >= self.best_needs
        return a.stop_avg100 is not None and full and (s.avg100 or 0.0) >= a.stop_avg100

    def is_past_limit(self, env_steps: int) -> bool:
        a = self.args
        if a.max_env_steps is not None and env_steps >= a.max_env_steps:
            log.info("--max-env-steps %d reached", a.max_env_steps)
            return True
        if a.max_seconds is not None and self.clock.monotonic() - self.t_start >= a.max_seconds:
            log.info("--max-seconds %s reached", a.max_seconds)
            return True
        return False

    def progress(self, status: str, counters: dict[str, int], replay_size: int,
                 rate: float | None, replay_fill: float | None = None) -> None:  # fmt: skip
        self.curves.tick(counters["env_steps"], counters["updates"], replay_fill,
                         self.args.num_envs, self.args.batch_size)  # fmt: skip
        write_progress(self.files, self.args, status, self.stats, counters["env_steps"],
                       counters["updates"], self.last_ckpt_time, str(self.device), replay_size,
                       rate)  # fmt: skip

    def save(self, nets: dict[str, Any], counters: dict[str, int]) -> bool:
        """One checkpoint: the loop's ``nets`` (state dicts) and ``counters``, with the shared
        state; then best.pt when it is behind. A failed write keeps the previous checkpoint."""
        env_steps = counters["env_steps"]
        state = {
            "version": 1,
            "config": self.args.to_dict(),
            "scaled": list(self.begin.scaled),
            **nets,
            "counters": counters,
            "stats": self.stats.state(),
            "epsilon": epsilon(self.args, env_steps),
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
            "best_weights": self.best_weights,
            "time": self.clock.now(),
        }
        t0 = self.clock.monotonic()
        try:
            path = checkpoint.save(self.files.ckpt_dir, state, self.args.keep_checkpoints)
        except OSError as exc:
            # Disk full and friends: the previous checkpoint is intact; keep training.
            log.error("checkpoint failed, previous checkpoint kept: %s", exc)
            return False
        self.last_ckpt_time = self.clock.now()
        log.info("checkpoint %s in %.2f s", path.name, self.clock.monotonic() - t0)
        self.curves.commit()  # the curves never run ahead of the newest checkpoint
        if self.best_weights is not None and not self.best_written:
            try:
                self.export_best(self.best_weights)
                self.best_written = True
            except OSError as exc:  # the checkpoint holds best_weights: retried next time
                log.error("could not export %s: %s", self.files.best_path, exc)
        return True

    def periodic_save(self, nets: dict[str, Any], counters: dict[str, int]) -> None:
        self.ckpt_failed = not self.save(nets, counters)

    def export_best(self, weights: dict[str, torch.Tensor]) -> None:
        export_best(self.files, self.args, weights, self.stats.best, self.stats,
                    self.spec.obs_shape, self.spec.num_actions)  # fmt: skip

    def finish(self, stop: Any, done: bool, q: torch.nn.Module, nets: dict[str, Any],
               counters: dict[str, int], replay_size: int, rate: float | None) -> int:  # fmt: skip
        """The end of a run: the final checkpoint, best.pt when the target was reached, the
        final progress, and the exit code (1 when the final checkpoint could not be written)."""
        if stop.set:
            log.info("signal %s: checkpointing and stopping", stop.signals[0])
        ok = self.save(nets, counters)
        if done:
            # The target is reached: make sure a best export exists even with a short run.
            try:
                self.export_best(self.best_weights or snapshot(q))
            except OSError as exc:
                log.error("could not export %s: %s", self.files.best_path, exc)
                ok = False
        self.progress("done" if done else "stopped", counters, replay_size, rate)
        self.curves.close()
        if self.ckpt_failed and not ok:
            log.error("the final checkpoint could not be written")
        return ExitCode.OK if ok else ExitCode.FAILURE

    def log_rate(self, counters: dict[str, int], steps_at_start: int, eps: float) -> None:
        mono = self.clock.monotonic()
        sps = (counters["env_steps"] - steps_at_start) / max(1e-9, mono - self.t_start)
        avg = self.stats.avg100
        log.info("env_steps=%d updates=%d episodes=%d avg100=%s eps=%.3f steps/s=%.0f",
                 counters["env_steps"], counters["updates"], self.stats.episodes,
                 None if avg is None else round(avg, 2), eps, sps)  # fmt: skip
