"""The process manager: runs the game queue on the current level's slots.

Only the supervisor's main loop calls it. ``tick()`` is cheap (poll children, deadlines, backoff
timers, free slots) and runs on every loop wake-up; ``health()`` also reads the heartbeats, detects
frozen trainers and rotates logs. Every start, exit, restart and stop is written to the ``runs``
and ``decisions`` tables with its reason.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from daemon.clock import Clock
from daemon.config import Level, Profile
from daemon.fleet import Fleet, write_fence
from daemon.placement import Gpu, choose_gpu
from daemon.process.os_seam import OsSeam, Proc, rotate_log
from daemon.process.outbox import Outbox
from daemon.process.states import ACTIVE, LIVE, After, BackoffPolicy, Game, RunRef, State
from daemon.registry import ModelRegistry
from daemon.store import Store, StoreError
from daemon.store.schema import Outcome
from trainer import contract

log = structlog.get_logger("daemon.process")


def describe_exit(rc: int) -> tuple[int | None, str | None, str]:
    """(exit_code, signal name, text) from a Popen return code."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return None, name, f"killed by {name}"
    return rc, None, f"exit code {rc}"


def trainer_argv(
    profile: Profile, level: Level, game: Game, run_dir: Path, fence_token: int | None = None
) -> list[str]:
    """The trainer's command line, built by the contract from ``Args`` field names. The buffer
    is always passed (the trainer's default when the level has none), so a resume never keeps
    another budget than the one the profile validator counted. ``fence_token``: fleet mode's
    lease token (the trainer stops writing once the run dir's fence holds a newer one)."""
    values = {
        "game": game.name, "episodes": game.target,
        # A run keeps the algo it started with (its network and checkpoints are that algo's):
        # the level's algo is passed only for a fresh run; the trainer restores the run's own.
        "algo": None if contract.has_checkpoint(run_dir) else profile.level_algo(level),
        "num_envs": level.num_envs, "batch_size": level.batch_size,
        "run_dir": run_dir, "device": profile.device,
        "seed": profile.seed + game.index, "checkpoint_every": profile.checkpoint_every,
        "buffer_gb": contract.buffer_gb_or_default(level.buffer_gb),
        "fence_token": fence_token,
    }  # fmt: skip
    return [sys.executable, "-m", "trainer", *contract.to_argv(values),
            *profile.trainer_args, *level.trainer_args]  # fmt: skip


def read_progress(run_dir: Path) -> dict[str, Any]:
    """The trainer's heartbeat, validated by the contract: a bad value (NaN, a string, a negative
    count) drops that field only and is logged; {} when absent."""
    fields, problems = contract.read_progress(run_dir)
    if problems:
        log.warning("progress.json: values ignored", file=str(run_dir / contract.PROGRESS_FILE),
                    problems=problems)  # fmt: skip
    return fields


def _trainer_done(g: Game) -> bool:
    """The trainer itself reported the game done before its episode target (``--stop-avg100``)
    for a target at least as large as today's: no run would add anything. A raised target
    resumes it (its trainer decides again)."""
    done_for = g.progress.get("target_episodes")
    return (
        g.progress.get("status") == "done"
        and isinstance(done_for, int)
        and not isinstance(done_for, bool)
        and done_for >= g.target
    )


def _why_done(episodes: int, target: int) -> str:
    return "target reached" if episodes >= target else "trainer reported done"


def _backoff(profile: Profile) -> BackoffPolicy:
    b = profile.backoff
    return BackoffPolicy(b.initial, b.factor, b.max, b.reset_after, b.storm_crashes, b.storm_window,
                         b.max_no_progress_restarts)  # fmt: skip


class ProcessManager:
    def __init__(
        self, profile: Profile, store: Store, clock: Clock, seam: OsSeam,
        runs_dir: Path, logs_dir: Path, level: str,
    ) -> None:  # fmt: skip
        self.profile, self.store, self.clock, self.seam = profile, store, clock, seam
        self.runs_dir, self.logs_dir = runs_dir, logs_dir
        self.level = level
        self.policy = _backoff(profile)
        self.draining = False  # shutting down: start nothing new
        # Bumped by every level change: a live process of an older epoch is still draining it.
        self.epoch = 0
        self.outbox = Outbox()
        # Games a reload removed: shown and stopped until their process is gone, then dropped.
        self.removed: set[str] = set()
        self.games: dict[str, Game] = {
            g.name: Game(g.name, g.target, i) for i, g in enumerate(profile.games)
        }
        self.models = ModelRegistry(store)
        # The GPUs as NVML sees them now (the supervisor wires its probe in); none on a CPU box.
        self.gpus: Callable[[], list[Gpu]] = list
        # Slots the autoscaler took back at the bottom rung under pressure (``pause_newest``);
        # ``resume_paused`` gives one back, a level change all.
        self.paused_slots = 0
        # Fleet mode (docs/fleet.md): ``games`` holds only the games this box has claimed; a
        # game lost to another box is in ``lost`` until its trainer is gone, and its shared
        # games row is no longer this box's to write.
        self.fleet: Fleet | None = None
        self.lost: set[str] = set()

    # ------------------------------------------------------------------ paths and records

    def run_dir(self, game: str) -> Path:
        return self.runs_dir / game

    def log_path(self, game: str) -> Path:
        return self.logs_dir / f"{game}.log"

    def _decide(
        self, g: Game, prev: State | str | None, reason: str, kind: str = "process"
    ) -> None:
        now = self.clock.now()
        prev_s = prev.value if isinstance(prev, State) else prev
        to_s = g.state.value
        self.outbox.write(
            f"decision {g.name} {prev_s} -> {to_s}",
            lambda: self.store.record_decision(now, kind, reason, g.name, prev_s, to_s),
        )
        warn = g.state in (State.BACKOFF, State.FATAL) or "frozen" in reason
        (log.warning if warn else log.info)(
            "game state", game=g.name, from_state=prev_s, to_state=g.state.value, reason=reason
        )
        self._persist(g)

    def _persist(self, g: Game) -> None:
        """The game's row in the store: a snapshot, so a refused write only marks it dirty and
        the latest state is written on a later pass (``flush_store``)."""
        if g.name in self.lost:
            return  # the new holder writes it now
        if self.outbox:
            self.outbox.dirty.add(g.name)  # its history is not written yet: keep the order
            return
        try:
            self._write_snapshot(g)
        except StoreError as e:
            log.warning("store write failed; game row written on a later pass", game=g.name,
                        error=str(e))  # fmt: skip
            self.outbox.dirty.add(g.name)

    def _write_snapshot(self, g: Game) -> None:
        p = g.progress
        fields: dict[str, Any] = {
            "state": g.state.value, "target": g.target, "updated_at": self.clock.now(),
            "pid": g.proc.pid if g.proc is not None else None,
        }  # fmt: skip
        for src, dst in (("episodes", "episodes"), ("env_steps", "env_steps"),
                         ("best_return", "best_return"), ("avg100", "avg100"),
                         ("episodes_per_hour", "episodes_per_hour"),
                         ("last_checkpoint_time", "last_checkpoint_time")):  # fmt: skip
            if p.get(src) is not None:
                fields[dst] = p[src]
        self.store.upsert_game(g.name, **fields)

    def _read_run_dir(self, g: Game) -> None:
        """progress.json into ``g.progress``, and the model registry brought up to date."""
        # Field by field: a value the reader refused keeps its last good value.
        g.progress = {**g.progress, **read_progress(self.run_dir(g.name))}
        try:
            self.models.update(g.name, self.run_dir(g.name))
        except Exception:
            # The registry is a view for atarictl: it must never stop supervising.
            log.exception("model registry update failed", game=g.name)

    # ------------------------------------------------------------------ restore

    def restore(self) -> None:
        """Rebuild every game from the store and its run dir's progress.json."""
        stored = self.store.games()
        for g in self.games.values():
            self._restore_game(g, stored.get(g.name, {}))

    def _restore_game(self, g: Game, row: dict[str, Any]) -> None:
        """One game from its stored row and its run dir: at daemon start, or when this box
        claims it from the fleet's queue (it resumes where the last holder left it)."""
        self._read_run_dir(g)
        episodes = int(g.progress.get("episodes") or row.get("episodes") or 0)
        prev = row.get("state")
        if episodes >= g.target:
            g.done(f"target reached ({episodes}/{g.target} episodes)")
        elif _trainer_done(g):
            g.done(f"trainer reported done ({episodes}/{g.target} episodes)")
        elif prev in (State.STOPPED.value, State.FATAL.value):
            g.restored(State(prev), f"restored {prev} from the store")
        elif contract.has_checkpoint(self.run_dir(g.name)):
            g.restored(State.QUEUED, f"restored: {episodes}/{g.target} episodes; "
                       "resumes from its checkpoint")  # fmt: skip
        elif episodes:
            g.restored(State.QUEUED, f"restored: {episodes}/{g.target} episodes; no "
                       "checkpoint yet, so it starts over")  # fmt: skip
        else:
            g.restored(State.QUEUED, "restored: not started yet")
        self._decide(g, prev, g.reason)

    def stop_leftovers(self, find: Any) -> list[str]:
        """After a ``kill -9`` of the daemon its trainers live on in their own process groups.
        We stop them cleanly (SIGTERM: they checkpoint) and restart them ourselves, rather than
        adopt them: a process we did not spawn cannot be waited on for its exit code. ``find``
        is ``(pid, create_time, run_dir) -> Proc | None`` and verifies pid reuse."""
        candidates: dict[str, list[tuple[int, float | None, int | None]]] = {}
        for run in self.store.open_runs():
            candidates.setdefault(run["game"], []).append(
                (run["pid"], run["proc_start_time"], run["id"])
            )
        for name in self.games:
            pid = read_progress(self.run_dir(name)).get("pid")
            if isinstance(pid, int):
                candidates.setdefault(name, []).append((pid, None, None))
        leftovers: dict[str, Proc] = {}
        now = self.clock.now()
        for name, cands in candidates.items():
            for pid, ctime, run_id in cands:
                proc = find(pid, ctime, self.run_dir(name))
                if proc is not None and name not in leftovers:
                    leftovers[name] = proc
                if run_id is not None:
                    alive = proc is not None
                    reason = (
                        f"leftover trainer pid {pid} of a previous daemon: stopped cleanly at start"
                        if alive else "ended while the daemon was down (exit status unknown)"
                    )  # fmt: skip
                    self.store.run_ended(
                        run_id,
                        now,
                        exit_code=None,
                        signal=None,
                        reason=reason,
                        outcome=Outcome.STOPPED if alive else Outcome.UNKNOWN,
                    )
        for name, proc in leftovers.items():
            log.warning("stopping leftover trainer", game=name, pid=proc.pid)
            self._terminate(proc)
        deadline = self.clock.monotonic() + self.profile.stop_grace
        for name, proc in leftovers.items():
            left = max(0.0, deadline - self.clock.monotonic())
            if self.seam.wait(proc, left) is None:
                self.seam.signal_group(proc, signal.SIGKILL)
                self.seam.wait(proc, 10.0)
            self.store.record_decision(
                self.clock.now(), "process",
                f"stopped leftover trainer pid {proc.pid} of a previous daemon (SIGTERM, "
                "checkpointed); it restarts from its checkpoint", name,
            )  # fmt: skip
        return sorted(leftovers)

    # ------------------------------------------------------------------ the loop's entry points

    def flush_store(self) -> bool:
        """Writes the store refused earlier, in order, then the dirty game rows. True when the
        store has everything."""
        if not self.outbox.flush():
            return False
        for name in sorted(self.outbox.dirty):
            g = self.games.get(name)
            try:
                if g is not None:
                    self._write_snapshot(g)
            except StoreError:
                return False
            self.outbox.dirty.discard(name)
        return True

    def tick(self) -> None:
        self.flush_store()
        mono = self.clock.monotonic()
        for g in self.games.values():
            if g.state in LIVE:
                rc = self.seam.poll(g.proc)
                if rc is not None:
                    self._on_exit(g, rc)
                    continue
            if g.state is State.STOPPING and g.stop_deadline is not None and not g.killed:
                if mono >= g.stop_deadline:
                    g.killed = True
                    self.seam.signal_group(g.proc, signal.SIGKILL)
                    log.warning("stop_grace over, SIGKILL", game=g.name,
                                stop_grace=self.profile.stop_grace)  # fmt: skip
            elif g.state is State.STARTING and g.started_mono is not None:
                if mono - g.started_mono >= self.profile.startsecs:
                    g.became_running()
                    self._decide(g, State.STARTING,
                                 f"stayed up startsecs={self.profile.startsecs:g}s")  # fmt: skip
            elif (
                g.state is State.BACKOFF
                and not self.draining
                and g.retry_at is not None
                and mono >= g.retry_at
            ):
                self._spawn(g, f"backoff over; restart #{len(g.crashes)}")
        for name in [n for n in self.removed if self.games[n].proc is None]:
            del self.games[name]
            self.removed.discard(name)
            if self.fleet is not None:
                with contextlib.suppress(StoreError):  # else it expires after fleet.lease
                    self.fleet.release(name)
        for name in [n for n in self.lost if n in self.games and self.games[n].proc is None]:
            del self.games[name]  # lost to another box: it shows there now
        self._fill_slots()

    def health(self) -> None:
        """Heartbeats, frozen detection, backoff reset, log rotation (the health job)."""
        mono, now = self.clock.monotonic(), self.clock.now()
        if self.fleet is not None:
            self.renew_leases()
        for g in self.games.values():
            if g.state in LIVE:
                self._read_run_dir(g)
                self._persist(g)
            if g.state is State.RUNNING:
                if g.maybe_reset_backoff(mono, self.policy):
                    log.info("backoff reset", game=g.name, reset_after=self.policy.reset_after)
                self._check_frozen(g, mono, now)
            with contextlib.suppress(OSError):
                if rotate_log(self.log_path(g.name), self.profile.game_logs.max_bytes,
                              self.profile.game_logs.backups):  # fmt: skip
                    log.info("rotated game log", game=g.name)

    def _check_frozen(self, g: Game, mono: float, now: float) -> None:
        beat = g.progress.get("updated_at") if g.progress.get("pid") == g.proc.pid else None
        last = max(float(beat or 0.0), g.started_wall or 0.0)
        age = now - last
        if age > self.profile.frozen_after:
            reason = (
                f"frozen: heartbeat {age:.0f}s old (frozen_after={self.profile.frozen_after:g}s);"
                " graceful restart"
            )
            self._stop(g, After.RESTART, reason)

    # ------------------------------------------------------------------ exits and starts

    def _on_exit(self, g: Game, rc: int) -> None:
        code, sig, text = describe_exit(rc)
        self._read_run_dir(g)
        episodes = int(g.progress.get("episodes") or 0)
        reached = g.progress.get("status") == "done" or episodes >= g.target
        prev = g.state
        after = g.after
        outcome = Outcome.CRASH
        if code == contract.ExitCode.SUPERSEDED and self.fleet is not None:
            # The trainer found a newer holder's token in the fence before the health check's
            # renewal told this box: the game is lost, whatever state it was in here.
            self._lose(g, "trainer exit code 8: the run dir's fence holds a newer token")
        if g.state is State.STOPPING:
            outcome = Outcome.STOPPED
            reason = f"{g.stop_reason}: {text}"
            if g.killed:
                reason += f" after stop_grace={self.profile.stop_grace:g}s"
            if rc == 0 and reached:
                outcome = Outcome.DONE
                g.done(f"{_why_done(episodes, g.target)} ({episodes}/{g.target} episodes) while "
                       "stopping")
            else:
                frozen = after is After.RESTART and g.stop_reason.startswith("frozen")
                g.exited_while_stopping(self.policy if frozen else None)
                if g.state is State.FATAL:
                    reason = g.reason
        elif rc == 0 and reached:
            outcome = Outcome.DONE
            reason = f"{_why_done(episodes, g.target)} ({episodes}/{g.target} episodes): {text}"
            g.done(reason)
        elif (fatal := contract.fatal_reason(code)) is not None:
            reason = fatal  # retrying cannot help (trainer/contract.py: ExitCode)
            g.fatal(reason)
            reason = g.reason
        else:
            why = text if rc != 0 else f"{text} before the target ({episodes}/{g.target})"
            label = "failed start" if prev is State.STARTING else "crashed"
            g.crashed(self.clock.monotonic(), self.policy, f"{label}: {why}")
            reason = g.reason
        run, g.run = g.run, None
        if run is not None:
            now = self.clock.now()

            def ended(run: RunRef = run) -> None:
                # Queued after its run_started, so the id is there when this runs.
                assert run.id is not None
                self.store.run_ended(run.id, now, exit_code=code, signal=sig, reason=reason,
                                     outcome=outcome)  # fmt: skip

            self.outbox.write(f"run ended {g.name}", ended)
        self._decide(g, prev, reason)
        if self.fleet is not None and g.state is State.DONE and g.name not in self.lost:
            with contextlib.suppress(StoreError):  # else at shutdown (release_fleet)
                self.fleet.release(g.name, done=True)
        if after is After.RESTART and g.state is State.QUEUED and not self.draining:
            self._spawn(g, "restart after stop")

    def _spawn(self, g: Game, reason: str) -> None:
        if g.proc is not None:
            # Two trainers on one run dir overwrite each other: whatever path asked for this,
            # the process the manager still holds wins (the trainer's run-dir lock backs this).
            log.error("refused to spawn a second trainer", game=g.name, pid=g.proc.pid,
                      state=g.state.value, reason=reason)  # fmt: skip
            return
        level = self.profile.level(self.level)
        run_dir = self.run_dir(g.name)
        token = None if self.fleet is None else self.fleet.token(g.name)
        argv = trainer_argv(self.profile, level, g, run_dir, token)
        prev = g.state
        device = self._place()
        env = None if device is None else {"CUDA_VISIBLE_DEVICES": str(device)}
        try:
            proc = self.seam.spawn(argv, run_dir, self.log_path(g.name), env=env)
        except OSError as e:
            g.crashed(self.clock.monotonic(), self.policy, f"spawn failed: {e}")
            self._decide(g, prev, g.reason)
            return
        now = self.clock.now()
        # Memory first: the manager holds the pid whatever the store does next.
        run = RunRef()
        g.start(proc, run, self.clock.monotonic(), now, self.level, self.epoch)
        g.gpu = device

        def started(name: str = g.name, pid: int = proc.pid, lv: str = self.level) -> None:
            run.id = self.store.run_started(
                name, pid, now, level=lv, num_envs=level.num_envs,
                batch_size=level.batch_size, proc_start_time=proc.create_time,
                device=None if device is None else str(device),
            )  # fmt: skip

        self.outbox.write(f"run started {g.name} pid {proc.pid}", started)
        episodes = int(g.progress.get("episodes") or 0)
        self._decide(
            g,
            prev,
            f"{reason}; pid {proc.pid}, level {self.level} "
            f"({level.num_envs} envs x batch {level.batch_size}), from episode {episodes}"
            + ("" if device is None else f", on GPU {device} (most free memory)"),
        )

    def _place(self) -> int | None:
        """The GPU for a new trainer on a multi-GPU box (daemon/placement.py); None otherwise,
        and always with ``device: cpu``. A failing probe places nothing: it never stops a start."""
        if self.profile.device == "cpu":
            return None
        try:
            gpus = self.gpus()
        except Exception:
            log.exception("GPU placement: probe failed; the trainer picks its own device")
            return None
        placed = {h.proc.pid: h.gpu for h in self.games.values()
                  if h.proc is not None and h.gpu is not None}  # fmt: skip
        return choose_gpu(gpus, placed)

    def queue_order(self) -> list[Game]:
        """Longest target first; the profile's order breaks ties."""
        queued = [g for g in self.games.values() if g.state is State.QUEUED]
        return sorted(queued, key=lambda g: (-g.target, g.index))

    def free_slots(self) -> int:
        used = sum(1 for g in self.games.values() if g.state in ACTIVE)
        return max(0, self.profile.level(self.level).games - self.paused_slots - used)

    def pause_newest(self, reason: str) -> str | None:
        """Sustained pressure at the bottom rung: stop the most recently started trainer
        (SIGTERM, it checkpoints), requeue it and take its slot away until ``resume_paused`` or
        the next level change, so the kernel's OOM killer never picks the victim. One trainer
        keeps running."""
        live = [g for g in self.games.values() if g.state in (State.STARTING, State.RUNNING)]
        if len(live) <= 1:
            log.warning("pressure at the bottom rung with one trainer left: nothing paused",
                        reason=reason)  # fmt: skip
            return None
        newest = max(live, key=lambda g: (g.started_mono or 0.0, g.index))
        self.paused_slots += 1
        self._stop(newest, After.QUEUED, f"paused under pressure ({reason})")
        return newest.name

    def resume_paused(self, reason: str) -> None:
        """Pressure has gone: one slot taken by ``pause_newest`` comes back, and the queue (the
        paused game first, being the longest or the earliest) fills it."""
        if self.paused_slots == 0:
            return
        self.paused_slots -= 1
        log.info("slot given back after pressure", reason=reason, paused_slots=self.paused_slots)
        self._fill_slots()

    def _fill_slots(self) -> None:
        if self.draining:
            return
        # While a level change drains, start nothing: old and new load must not overlap. The
        # drain is known by the epoch each live process was started at, whatever an operator
        # did to it since. (An operator start of a stopping game also pauses the queue, for
        # that one stop.)
        if any(
            g.proc is not None
            and (g.epoch != self.epoch or (g.state is State.STOPPING and g.after is After.QUEUED))
            for g in self.games.values()
        ):
            return
        if self.fleet is not None:
            self._fill_from_fleet()  # claims and hands back games without a process only
        for g in self.queue_order()[: self.free_slots()]:
            self._spawn(g, "slot free")

    # ------------------------------------------------------------------ fleet mode

    def _fill_from_fleet(self) -> None:
        """Claim games for the free slots (at most once a second); hand back queued games beyond
        them (a demotion, a pause), so another box with room runs them."""
        assert self.fleet is not None
        self._adopt_held()
        free, queued = self.free_slots(), self.queue_order()
        try:
            for g in [g for g in queued if g.name not in self.fleet.held]:
                # Queued again without a lease (an operator start of a game this box finished
                # and released): back into the queue, for whichever box claims it.
                left = max(1, g.target - int(g.progress.get("episodes") or 0))
                self.fleet.leases.offer({g.name: float(left)})
                del self.games[g.name]
                queued.remove(g)
            for g in queued[free:]:
                self.fleet.release(g.name)
                del self.games[g.name]
                log.info("game handed back to the fleet", game=g.name, box=self.fleet.box,
                         reason=f"more queued games than free slots ({free})")  # fmt: skip
            want, mono = free - len(queued), self.clock.monotonic()
            if want <= 0 or not self.fleet.claims.due(mono):
                return
            claimed = self.fleet.claim(want)
        except StoreError as e:
            delay = self.fleet.claims.failed(self.clock.monotonic())
            if self.fleet.claims.failures == 1:
                log.warning("fleet queue unreachable; trainers keep running, claims retried "
                            "with backoff", error=str(e), retry_in_s=delay)  # fmt: skip
            return
        if ended := self.fleet.claims.worked(mono):
            log.info("fleet queue reachable again", failed_claim_passes=ended)
        if claimed:
            self._adopt_held()

    def _adopt_held(self) -> None:
        """Every game this box holds a lease on but does not run yet joins it: the ones just
        claimed, and any whose adoption a store failure cut short (held and renewed meanwhile)."""
        assert self.fleet is not None
        waiting = {g: lease.token for g, lease in self.fleet.held.items() if g not in self.games}
        if not waiting:
            return
        try:
            stored = self.store.games()
        except StoreError:
            return  # on a later pass
        for name, token in waiting.items():
            self._adopt(name, token, stored.get(name, {}))

    def _adopt(self, name: str, token: int, row: dict[str, Any]) -> None:
        """A claimed game joins this box: its fence first (a stale holder's trainer stops
        writing from now on), then its state from the store and its run dir, as at a start."""
        assert self.fleet is not None
        index = next((i for i, gt in enumerate(self.profile.games) if gt.name == name), None)
        if index is None:  # claims are filtered by the profile's games; a reload raced it
            self.fleet.release(name)
            return
        try:
            write_fence(self.run_dir(name), token)
        except OSError as e:
            # Without its fence a stale holder could write on: do not run it here; another box
            # (or this one, on a later claim) may reach the shared storage.
            log.error("cannot write the run dir's fence; game handed back to the fleet",
                      game=name, path=str(self.run_dir(name)), error=str(e))  # fmt: skip
            self.fleet.release(name)
            self.fleet.claims.failed(self.clock.monotonic())  # not again at once
            return
        self.lost.discard(name)
        g = self.games[name] = Game(name, self.profile.games[index].target, index)
        self._restore_game(g, row)
        log.info("claimed from the fleet", game=name, box=self.fleet.box, token=token,
                 state=g.state.value)  # fmt: skip
        if g.state is State.DONE:
            self.fleet.release(name, done=True)

    def renew_leases(self) -> None:
        """The health check's renewal; a game another box claimed meanwhile is stopped here."""
        assert self.fleet is not None
        try:
            lost = self.fleet.renew()
        except StoreError as e:
            self.fleet.renew_failures += 1
            if self.fleet.renew_failures == 1:
                log.warning("lease renewal failed; trainers keep running, retried at every "
                            "health check", error=str(e),
                            lease=self.fleet.leases.lease_s)  # fmt: skip
            return
        if self.fleet.renew_failures:
            log.info("leases renewed again", failed_renewals=self.fleet.renew_failures,
                     lost=lost)  # fmt: skip
            self.fleet.renew_failures = 0
        for name in lost:
            g = self.games.get(name)
            if g is not None:
                self._lose(g, "lease lost: another box claimed the game (its lease "
                           f"expired: fleet.lease={self.fleet.leases.lease_s:g}s)")  # fmt: skip

    def _lose(self, g: Game, why: str) -> None:
        """Another box holds ``g`` now: stop its trainer here (SIGTERM; a fenced trainer writes
        nothing more) and forget the game once its process is gone."""
        assert self.fleet is not None
        self.fleet.forget(g.name)
        if g.name in self.lost:
            return
        self.lost.add(g.name)
        log.warning("game lost to another box", game=g.name, box=self.fleet.box, reason=why)
        if g.state in (State.STARTING, State.RUNNING):
            self._stop(g, After.STOPPED, why)
        elif g.state is State.STOPPING:
            g.after = After.STOPPED

    def work_left(self, name: str, target: int) -> int:
        """Episodes a game still has to run, from its run dir (0: done), the fleet's claim
        order: the most work left first."""
        g = Game(name, target, 0)
        g.progress = read_progress(self.run_dir(name))
        return 0 if _trainer_done(g) else max(0, target - int(g.progress.get("episodes") or 0))

    def release_fleet(self) -> None:
        """At shutdown, once every trainer has stopped: hand every game back at once, so other
        boxes claim them now rather than after ``fleet.lease``."""
        if self.fleet is None:
            return
        for name in list(self.fleet.held):
            g = self.games.get(name)
            self.fleet.release(name, done=g is not None and g.state is State.DONE)

    # ------------------------------------------------------------------ stops

    def _stop(self, g: Game, after: After, reason: str) -> None:
        prev = g.state
        g.stopping(self.clock.monotonic(), self.profile.stop_grace, after, reason)
        self._terminate(g.proc)
        self._decide(g, prev, f"{reason}: SIGTERM to process group {g.proc.pid}")

    def _terminate(self, proc: Proc) -> None:
        # SIGCONT after SIGTERM, as systemd does: a stopped trainer (SIGSTOP, ^Z, a debugger; the
        # usual cause of a frozen heartbeat) leaves SIGTERM pending until it runs again, so
        # without it every such stop would wait out stop_grace and end in SIGKILL, no checkpoint.
        self.seam.signal_group(proc, signal.SIGTERM)
        self.seam.signal_group(proc, signal.SIGCONT)

    def stop_all(self, reason: str, after: After = After.QUEUED) -> int:
        """SIGTERM every live game at once (parallel); the loop's ``tick`` SIGKILLs at the
        deadline. Returns the number of processes signalled."""
        n = 0
        for g in self.games.values():
            if g.state in (State.STARTING, State.RUNNING):
                self._stop(g, after, reason)
                n += 1
            elif g.state is State.STOPPING and g.after is After.RESTART:
                g.after = after  # a shutdown wins over a pending restart
        return n

    def shutdown(self, reason: str) -> int:
        self.draining = True
        return self.stop_all(reason, After.QUEUED)

    def any_live(self) -> bool:
        return any(g.state in LIVE for g in self.games.values())

    def change_level(self, level: str, cause: str, *, demotion: bool = False) -> int:
        """Graceful stop of the running games; they restart with ``level``'s settings.
        Returns how many were stopped. A demotion is logged at warning, a promotion at info."""
        old, self.level = self.level, level
        self.epoch += 1
        self.paused_slots = 0
        stopping = [g for g in self.games.values() if g.state in (State.STARTING, State.RUNNING)]
        (log.warning if demotion else log.info)(
            "level change: games restart with the new level's settings",
            from_level=old, to_level=level, cause=cause, games=[g.name for g in stopping],
        )  # fmt: skip
        for g in stopping:
            self._stop(g, After.QUEUED, f"level {old} -> {level}")
        for g in self.games.values():
            # Neither a pending restart nor a backoff retry may start a trainer while the old
            # level drains (old and new load would overlap), nor beyond the new level's slots
            # (a demotion): they queue, and take a slot once the drain is over. The crash
            # history stays, so a crash storm still ends in FATAL.
            if g.state is State.STOPPING and g.after is After.RESTART:
                g.after = After.QUEUED
            elif g.state is State.BACKOFF:
                g.stopped_without_process(After.QUEUED, f"level {old} -> {level}: queued")
                self._decide(g, State.BACKOFF, g.reason)
        return len(stopping)

    # ------------------------------------------------------------------ operator commands

    def unknown(self, names: list[str]) -> list[str]:
        return [n for n in names if n != "all" and (n not in self.games or n in self.removed)]

    def _select(self, names: list[str]) -> list[Game]:
        if "all" in names:
            return [g for g in self.games.values() if g.name not in self.removed]
        return [self.games[n] for n in names]

    def start(self, names: list[str]) -> dict[str, str]:
        out = {}
        for g in self._select(names):
            if g.state in (State.STOPPED, State.FATAL) or (
                g.state is State.DONE
                and int(g.progress.get("episodes") or 0) < g.target
                and not _trainer_done(g)
            ):
                prev = g.state
                g.requeue("operator start")
                self._decide(g, prev, "operator start", kind="operator")
            elif g.state is State.STOPPING and g.after is After.STOPPED:
                self._start_once_stopped(g, "operator start")
            out[g.name] = g.state.value
        self._fill_slots()
        return {n: self.games[n].state.value for n in out}

    def stop(self, names: list[str]) -> dict[str, str]:
        for g in self._select(names):
            if g.state in (State.STARTING, State.RUNNING):
                self._stop(g, After.STOPPED, "operator stop")
            elif g.state is State.STOPPING:
                g.after = After.STOPPED
            elif g.state in (State.QUEUED, State.BACKOFF, State.FATAL):
                prev = g.state
                g.stopped_without_process(After.STOPPED, "operator stop")
                self._decide(g, prev, "operator stop", kind="operator")
        return {g.name: g.state.value for g in self._select(names)}

    def _start_once_stopped(self, g: Game, reason: str) -> None:
        """Start (or restart) of a game an operator stop is stopping: like supervisorctl, it
        takes effect once the process has exited. The trainer is checkpointing, so it is not
        interrupted; it queues then, and takes a slot like any queued game."""
        g.after = After.QUEUED
        g.reason = f"{reason} while stopping: queued once stopped"
        self._decide(g, State.STOPPING, g.reason, kind="operator")

    def restart(self, names: list[str]) -> dict[str, str]:
        for g in self._select(names):
            if g.state in (State.STARTING, State.RUNNING):
                self._stop(g, After.RESTART, "operator restart")
            elif g.state is State.STOPPING and g.after is After.STOPPED:
                self._start_once_stopped(g, "operator restart")
            elif g.state in (State.STOPPED, State.FATAL, State.BACKOFF):
                prev = g.state
                if g.state is State.BACKOFF:
                    g.stopped_without_process(After.QUEUED, "operator restart")
                else:
                    g.requeue("operator restart")
                self._decide(g, prev, "operator restart", kind="operator")
        self._fill_slots()
        return {g.name: g.state.value for g in self._select(names)}

    def set_profile(self, profile: Profile) -> list[str]:
        """Adopt a reloaded profile: new games queue, targets and settings update; games no
        longer in the profile are stopped. Returns what changed, for the reply."""
        changes = []
        # The supervisor has already moved to a level of the new profile (``_sync_level``).
        assert self.level in profile.level_names, self.level
        self.profile, self.policy = profile, _backoff(profile)
        if self.fleet is not None:
            # New games queue here and are offered to the fleet (``_fill_from_fleet``), so
            # whichever box has room claims them; a removed game is released once stopped.
            self.fleet.games = frozenset(gt.name for gt in profile.games)
        for i, gt in enumerate(profile.games):
            g = self.games.get(gt.name)
            self.removed.discard(gt.name)
            if g is None:
                g = self.games[gt.name] = Game(gt.name, gt.target, i)
                self._decide(g, None, "reload: new game queued")
                changes.append(f"added {gt.name}")
                continue
            g.index = i
            if g.target != gt.target:
                changes.append(f"{gt.name} target {g.target} -> {gt.target}")
                g.target = gt.target
                if g.state in (State.STARTING, State.RUNNING):
                    self._stop(g, After.RESTART, "reload: target changed")
                elif (
                    g.state is State.DONE
                    and int(g.progress.get("episodes") or 0) < g.target
                    and not _trainer_done(g)
                ):
                    g.requeue("reload: target raised")
                    self._decide(g, State.DONE, "reload: target raised")
        wanted = {gt.name for gt in profile.games}
        for name in [n for n in self.games if n not in wanted and n not in self.removed]:
            self.stop([name])
            self.removed.add(name)
            changes.append(f"removed {name} (stopped)")
        self._fill_slots()
        return changes

    # ------------------------------------------------------------------ views

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in State}
        for g in self.games.values():
            out[g.state.value] += 1
        return out
