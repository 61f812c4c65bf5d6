"""The supervisor: ONE main loop that decides, fed by one event queue.

Who talks to it, and how (all thread-safe, none of them acts by itself):
- scheduler jobs (``daemon/checks.py``) and signal handlers call ``post(event)``;
- the control socket (``daemon/control_server/server.py``) calls ``handle_request(request)``, which
  queues the request and waits for the loop's reply: ``{"ok": true, "result": {...}}`` or
  ``{"ok": false, "error": "one line", "code": "unknown_game" | "bad_request" | ...}``;
- more commands plug in with ``register_command(name, fn)``; ``fn(args) -> dict`` runs in the
  main loop (the autoscaler's ``level``/``pin``/``unpin`` do, see ``daemon/app.py``).

The level comes from one place, ``level_source.current_level()`` (``FixedLevel`` or the
autoscaler). After every event the loop compares it with the level the games run at and, if it
differs, does the level change (graceful parallel stop, restart with the new settings). On the
``stability`` event it calls ``level_source.check(now)`` when the source has one.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from daemon.autoscaler.shedding import reading_from
from daemon.clock import Clock
from daemon.config import Profile, ProfileError, load_profile
from daemon.control_server.protocol import ReplyCode, error, ok
from daemon.evals import Evals
from daemon.level_source import Command, LevelSource, Load
from daemon.placement import gpus_from_sample
from daemon.pressure import PressureProbe
from daemon.process import After, ProcessManager, State
from daemon.reload import check_levels, settings_changed
from daemon.sdnotify import Notifier
from daemon.side_jobs import SideJobs
from daemon.status import (
    GameRow,
    NextDecision,
    Rate,
    decision_time,
    game_rate,
    game_row,
    normalize_gpu,
)
from daemon.status import build as build_status
from daemon.store import Store, StoreError
from daemon.telemetry import GpuProbe, ProcessProbe, host_sample
from daemon.top import build as build_top

log = structlog.get_logger("daemon.supervisor")

_NO_GPU = {"available": False, "reason": "no GPU", "gpus": []}
_SHUTTING_DOWN = error(ReplyCode.SHUTTING_DOWN, "the daemon is shutting down")


class CommandError(Exception):
    """A command's refusal: becomes ``{"ok": false, "code": code, "error": message}``."""

    def __init__(self, code: ReplyCode, message: str) -> None:
        super().__init__(message)
        self.code = ReplyCode(code)


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Check:
    kind: str  # health | stability | telemetry | report | eval | child (SIGCHLD)


@dataclass(frozen=True)
class Shutdown:
    reason: str
    exit_code: int = 0  # non-zero (a failed health check): systemd restarts the daemon


@dataclass
class Request:
    cmd: str
    args: dict[str, Any]
    reply: queue.Queue[dict[str, Any]] = field(default_factory=lambda: queue.Queue(maxsize=1))


# ---------------------------------------------------------------------------- supervisor


class Supervisor:
    def __init__(
        self,
        profile: Profile,
        store: Store,
        clock: Clock,
        manager: ProcessManager,
        level_source: LevelSource,
        *,
        notifier: Notifier | None = None,
        gpu: GpuProbe | None = None,
        daemon_run_id: int | None = None,
        pressure: PressureProbe | None = None,
    ) -> None:
        self.profile, self.store, self.clock = profile, store, clock
        self.manager, self.level_source = manager, level_source
        self.notifier = notifier or Notifier(address="")
        self.gpu = gpu
        if gpu is not None:
            # Placement asks NVML at each start: a new trainer goes where memory is free now.
            manager.gpus = lambda: gpus_from_sample(gpu.sample())
        self.procs = ProcessProbe()
        self.pressure = pressure if pressure is not None else PressureProbe()
        self.last_pressure: dict[str, Any] | None = None
        self.daemon_run_id = daemon_run_id
        self.started_at = clock.now()
        # SimpleQueue: put() is reentrant, so signal handlers may post too.
        self.events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.commands: dict[str, Command] = {}
        # Reload hooks: ``prepare(profile)`` checks the new profile against its part without
        # changing anything (``ValueError`` refuses it) and returns the commit.
        self.on_reload: list[Callable[[Profile], Callable[[], None]]] = []
        self.next_run: Callable[[str], float | None] = lambda _job: None
        self.stopping = False
        self.stopped = False
        # Held while a request is queued and while the loop ends: no request can be queued
        # after the last drain of the queue, so none waits out its timeout.
        self._exit_lock = threading.Lock()
        self.exit_code = 0
        self.last_gpu: dict[str, Any] | None = None
        self.last_samples: tuple[float, dict[str, dict[str, Any]]] | None = None
        # Evals and reports run as side jobs (own processes), started and polled by this loop.
        self.side_jobs = SideJobs(clock)
        self.evals = Evals(profile.eval, manager.runs_dir, store, clock, self.side_jobs)
        # The Prometheus publisher (daemon/metrics.py), refreshed at the end of a loop pass.
        self.metrics: Any = None
        self.last_procs: dict[str, Any] = {}
        self._status_line = ""
        for name, fn in (("status", self.cmd_status), ("start", self.cmd_start),
                         ("stop", self.cmd_stop), ("restart", self.cmd_restart),
                         ("reload", self.cmd_reload), ("shutdown", self.cmd_shutdown)):  # fmt: skip
            self.register_command(name, fn)
        self.register_command("top", self.cmd_top)
        for name, fn in level_source.commands().items():
            self.register_command(name, fn)
        level_source.load = self.load  # the autoscaler's load fact comes from the games here

    # ------------------------------------------------------------------ thread-safe inputs

    def post(self, event: object) -> None:
        self.events.put(event)

    def register_command(self, name: str, fn: Command) -> None:
        self.commands[name] = fn

    def handle_request(self, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        cmd, args = request.get("cmd"), request.get("args", {})
        if not isinstance(cmd, str) or not isinstance(args, dict):
            return error(ReplyCode.BAD_REQUEST, 'a request is {"cmd": NAME, "args": {...}}')
        req = Request(cmd, args)
        with self._exit_lock:
            if self.stopped:
                return _SHUTTING_DOWN
            self.post(req)
        try:
            return req.reply.get(timeout=timeout)
        except queue.Empty:
            return error(ReplyCode.TIMEOUT, f"the daemon did not answer within {timeout:g}s")

    # ------------------------------------------------------------------ the loop

    def run(self, wake: float = 1.0) -> int:
        """Until a shutdown has finished; wakes at least every ``wake`` seconds to reap."""
        while not self.stopped:
            try:
                self.loop_once(timeout=0.2 if self.stopping else wake)
            except Exception:
                # E.g. the database locked longer than its busy timeout: dying here would
                # orphan every trainer, so log it and try again on the next wake-up.
                log.exception("main loop pass failed; retrying")
        return self.exit_code

    def loop_once(self, timeout: float | None = 0.0) -> None:
        """Handle every queued event (waiting up to ``timeout`` for the first), then reap and
        fill slots. The only place that changes state."""
        try:
            event = self.events.get(timeout=timeout) if timeout else self.events.get_nowait()
        except queue.Empty:
            event = None
        t0 = self.clock.monotonic()
        while event is not None:
            self._handle(event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                event = None
        self.manager.tick()
        if self.manager.fleet is not None and not self.stopping:
            self._fleet_commands()
        self.side_jobs.poll()
        if not self.stopping:
            self.evals.tick(self._idle_slot)
        self._sync_level("level source changed")
        self._notify_status()
        if self.stopping and not self.manager.any_live():
            self._finish_shutdown()
        if self.metrics is not None:
            self.metrics.refresh()
            self.metrics.loop.passes += 1
            self.metrics.loop.pass_seconds += self.clock.monotonic() - t0

    def _handle(self, event: object) -> None:
        try:
            if isinstance(event, Request):
                event.reply.put(self._run_command(event))
            elif isinstance(event, Shutdown):
                self.exit_code = self.exit_code or event.exit_code
                self.begin_shutdown(event.reason)
            elif isinstance(event, Check):
                getattr(self, f"_on_{event.kind}")()
            else:
                log.error("unknown event ignored", event_type=type(event).__name__)
        except Exception:
            # One bad event must not take the supervisor down with every trainer.
            log.exception("event handling failed", event_type=type(event).__name__)
            if isinstance(event, Check) and self.metrics is not None:
                self.metrics.loop.job_failed(event.kind)

    def _run_command(self, req: Request) -> dict[str, Any]:
        fn = self.commands.get(req.cmd)
        if fn is None:
            known = ", ".join(sorted(self.commands))
            return error(ReplyCode.UNKNOWN_COMMAND, f"unknown command {req.cmd!r}; known: {known}")
        if self.stopping and req.cmd not in ("status", "shutdown"):
            return _SHUTTING_DOWN
        try:
            result = fn(req.args)
        except CommandError as e:
            return error(e.code, str(e))
        except (ValueError, KeyError) as e:
            return error(ReplyCode.BAD_REQUEST, str(e).strip("'\""))
        except Exception as e:
            log.exception("command failed", cmd=req.cmd)
            return error(ReplyCode.INTERNAL, f"{type(e).__name__}: {e}")
        if isinstance(result, dict) and "ok" in result:
            return result
        self._sync_level(f"operator {req.cmd}")
        return ok(result)

    # ------------------------------------------------------------------ checks

    def _on_child(self) -> None:
        pass  # the tick after every batch of events reaps

    def _on_health(self) -> None:
        self.manager.health()
        if self.daemon_run_id is not None:
            self.store.daemon_heartbeat(self.daemon_run_id, self.clock.now())
        self.notifier.watchdog()

    def _fleet_commands(self) -> None:
        """Operator commands other boxes or atarictl sent for games this box holds (rows of
        ``commands``, docs/fleet.md), carried out as if they had come over this socket; at
        most one look a second."""
        fleet, mono = self.manager.fleet, self.clock.monotonic()
        assert fleet is not None
        if not fleet.polls.due(mono):
            return
        try:
            due = fleet.due_commands()
        except StoreError:
            fleet.polls.failed(mono)  # the claims log the outage; the rows wait in the database
            return
        fleet.polls.worked(mono)
        for row in due:
            if row.game not in self.manager.games:
                continue
            result = getattr(self.manager, row.verb)([row.game])
            text = f"{row.verb} from {row.sent_by or '?'} (fleet command #{row.id}): " + \
                ", ".join(f"{g} {s}" for g, s in result.items())
            self._record(text, "operator")
            log.info("fleet command carried out", command=row.id, verb=row.verb, game=row.game,
                     sent_by=row.sent_by, result=result)  # fmt: skip
            # Unrecorded (the database went away): carried out once more on a later pass; a start
            # or stop of a game already in that state changes nothing.
            with contextlib.suppress(StoreError):
                fleet.commands.done(row.id, self.clock.now(), text)

    def _on_stability(self) -> None:
        decision = self.level_source.check(self.clock.now())
        # The autoscaler has stored and logged its decision with the full reason; the level
        # change row only names it, so the decisions table tells each thing once.
        trigger = decision.trigger if decision is not None else None
        self._sync_level(f"autoscaler {trigger}" if trigger else "autoscaler decision")

    def _on_telemetry(self) -> None:
        now = self.clock.now()
        pids = [g.proc.pid for g in self.manager.games.values() if g.proc is not None]
        samples: dict[str, dict[str, Any]] = {
            "host": host_sample(), "process": self.procs.sample(pids)
        }  # fmt: skip
        self.last_procs = samples["process"]
        if self.gpu is not None:
            samples["gpu"] = self.last_gpu = self.gpu.sample()
        samples["pressure"] = self.last_pressure = self.pressure.sample(self.clock.monotonic())
        for kind, payload in samples.items():
            self.store.add_telemetry(now, kind, payload)
        self.store.prune_telemetry(now - self.profile.telemetry_retention)
        self.last_samples = (now, samples)  # what `atarictl top` shows
        self._on_pressure(now, samples, pids)

    def _on_pressure(self, now: float, samples: dict[str, dict[str, Any]], pids: list[int]) -> None:
        """The autoscaler sees every telemetry tick (a level source without ``observe``, a fixed
        level, does not look): sustained pressure sheds a rung now, not at the next stability
        check, and at the bottom rung pauses the newest game."""
        observe = getattr(self.level_source, "observe", None)
        if observe is None:
            return
        reading = reading_from(now, samples.get("pressure"), samples.get("gpu"),
                               samples.get("process"), pids)  # fmt: skip
        decision = observe(now, reading)
        if decision is None:
            return
        if decision.trigger == "pause":
            self.manager.pause_newest(decision.reason)
        elif decision.trigger == "resume":
            self.manager.resume_paused(decision.reason)
        else:
            self._sync_level(f"autoscaler {decision.trigger}")

    def _on_eval(self) -> None:
        if self.evals.enabled:
            self.evals.due(list(self.manager.games))

    def _idle_slot(self) -> bool:
        try:
            slots = self.profile.level(self.manager.level).games
        except KeyError:  # a reload dropped the level the games still drain from
            return False
        c = self.manager.counts()
        return c["RUNNING"] + c["STARTING"] < slots

    def _on_report(self) -> None:
        # The Markdown/HTML report with its plot: its own process (matplotlib stays out of the
        # daemon, a slow plot never holds up this loop); one at a time.
        state_dir = str(self.manager.runs_dir.parent)
        self.side_jobs.start(
            "report", "report", ["daemon.reporting", "--state-dir", state_dir], timeout=600.0,
            threads=1, on_done=lambda rc, out, err: (log.info if rc == 0 else log.warning)(
                "report written" if rc == 0 else "report failed", path=out.strip() or None,
                exit_code=rc, error=err or None),
        )  # fmt: skip
        for r in self.game_rows():
            log.info("report", game=r.game, state=r.state, episodes=r.episodes, target=r.target,
                     episodes_per_hour=r.episodes_per_hour, eta_s=r.eta_s, best=r.best,
                     avg100=r.avg100)  # fmt: skip

    # ------------------------------------------------------------------ level and status

    def _sync_level(self, cause: str) -> None:
        """Carry out a level change the level source asks for. Who decided records why (the
        autoscaler its ``level`` row, reload its ``operator`` row); this records the restart of
        the games as a ``process`` row with no game, from the old level to the new one."""
        if self.stopping:
            return
        old, want = self.manager.level, self.level_source.current_level()
        if want == old:
            return
        # The old level is read from the profile it ran under (a reload may have dropped it).
        was, new = self.manager.profile.level(old), self.profile.level(want)
        lighter = new.games * new.num_envs < was.games * was.num_envs
        n = self.manager.change_level(want, cause, demotion=lighter)
        reason = (
            f"level change {old} -> {want} ({cause}): graceful stop of {n} running games; "
            f"games restart with {want}'s settings (games={new.games}, num_envs={new.num_envs},"
            f" batch_size={new.batch_size})"
        )
        self._record(reason, "process", old, want)

    def _record(self, reason: str, kind: str, prev: str | None = None,
                to: str | None = None) -> None:  # fmt: skip
        """A decisions row, in order behind the manager's writes; a store that refuses it (a full
        disk) gets it on a later pass, and the decision itself stands."""
        now = self.clock.now()
        self.manager.outbox.write(f"{kind} decision", lambda: self.store.record_decision(
            now, kind, reason, None, prev, to))  # fmt: skip

    def load(self) -> Load:
        """What the games ask of the box now: the autoscaler counts a level's time as loaded
        only while min(its slots, ``wanting``) trainers run (issue 12, item 1)."""
        idle: dict[str, int] = {}
        wanting = 0
        for g in self.manager.games.values():
            gone = g.name in self.manager.removed
            held = g.state is State.STOPPING and g.after is After.STOPPED  # an operator stop
            if gone or held or g.state in (State.DONE, State.FATAL, State.STOPPED):
                key = "removed" if gone else State.STOPPED.value if held else g.state.value
                idle[key] = idle.get(key, 0) + 1
            else:
                wanting += 1
        slots = {name: self.profile.level(name).games for name in self.profile.level_names}
        return Load(slots=slots, wanting=wanting,
                    idle=", ".join(f"{n} {k}" for k, n in sorted(idle.items())))  # fmt: skip

    def status_line(self) -> str:
        c = self.manager.counts()
        running = c["RUNNING"] + c["STARTING"]
        return (f"{self.manager.level} · {running} running · {c['QUEUED']} queued · "
                f"{c['FATAL']} fatal")  # fmt: skip

    def _notify_status(self) -> None:
        line = self.status_line()
        if self.stopping:
            line = f"stopping · {line}"
        if line != self._status_line:
            self._status_line = line
            self.notifier.status(line)

    def game_rows(self, now: float | None = None) -> list[GameRow]:
        now = self.clock.now() if now is None else now
        rows = []
        for g in self.manager.games.values():
            p = g.progress
            rows.append(game_row(
                game=g.name, state=g.state.value, target=g.target, now=now,
                pid=g.proc.pid if g.proc is not None else None, started_at=g.started_wall,
                episodes=p.get("episodes") or 0, episodes_per_hour=p.get("episodes_per_hour"),
                best=p.get("best_return"), avg100=p.get("avg100"),
                last_checkpoint_time=p.get("last_checkpoint_time"), reason=g.reason,
                rate_of=self._rate(g.name, now),
            ))  # fmt: skip
        return rows

    def _rate(self, game: str, now: float) -> Rate:
        """The smoothed episode rate (``daemon/status.py: episode_rate``), as atarictl's
        offline read computes it from the same runs table and episodes.jsonl."""
        try:
            spans = [(r["started_at"], r["ended_at"]) for r in self.store.runs(game)]
        except StoreError:
            spans = []  # no rate this time, rather than no status
        return game_rate(spans, self.manager.run_dir(game), now)

    # ------------------------------------------------------------------ commands

    def _names(self, args: dict[str, Any]) -> list[str]:
        names = args.get("games")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise CommandError(
                ReplyCode.BAD_REQUEST, 'args.games must be a list of game names or ["all"]'
            )
        unknown = self.manager.unknown(names)
        if self.manager.fleet is not None:
            unknown = [n for n in unknown if n not in self.manager.fleet.games]
        if unknown:
            known = self.manager.fleet.games if self.manager.fleet else self.manager.games
            raise CommandError(ReplyCode.UNKNOWN_GAME, f"unknown game {', '.join(unknown)}; known: "
                               f"{', '.join(sorted(known))}")  # fmt: skip
        return names

    def _operator(self, verb: str, args: dict[str, Any]) -> dict[str, Any]:
        """start/stop/restart: games this box holds here; in fleet mode a game held elsewhere
        (or by nobody yet) through a command row its holder carries out (docs/fleet.md)."""
        names = self._names(args)
        fleet = self.manager.fleet
        if fleet is None or "all" in names:
            return {"games": getattr(self.manager, verb)(names)}
        here = [n for n in names if n in self.manager.games and n not in self.manager.lost]
        out = getattr(self.manager, verb)(here) if here else {}
        for n in names:
            if n not in out:
                cid, done = fleet.commands.send(n, verb, self.clock.now())
                out[n] = done or f"sent to its holder (fleet command #{cid})"
        return {"games": out}

    def cmd_status(self, args: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.now()
        rows = self.game_rows(now)
        wanted = args.get("games")
        if wanted:
            unknown = self.manager.unknown(wanted)
            if unknown:
                raise CommandError(ReplyCode.UNKNOWN_GAME, f"unknown game {', '.join(unknown)}")
            rows = [r for r in rows if r.game in wanted]
        auto = self.level_source.status(now)
        level = self.manager.level
        # A move is made at a stability check: the first one at or after it is due.
        nd = auto.get("next_decision") or {"what": "stability check", "at": now}
        what, due = str(nd.get("what")), nd.get("at")
        at = decision_time(due, now, self.next_run("stability"), self.profile.checks.stability)
        if at is None and due is not None:
            what += " (at the next stability check)"
        gpu = normalize_gpu(self.last_gpu) if self.gpu is not None else _NO_GPU
        return build_status(
            source="daemon", now=now, level=level,
            daemon={"running": True, "pid": os.getpid(), "started_at": self.started_at,
                    "stopping": self.stopping, "profile": self.profile.path},
            level_entered_at=auto.get("entered_at", self.started_at),
            pinned=auto.get("pinned"),
            # Reboots only (the first boot a database sees is none), as the autoscaler counts.
            boots_last_hour=auto.get("reboots_last_hour", self.store.reboots_since(now - 3600)),
            next_decision=NextDecision(what, at), gpu=gpu,
            slots=self.profile.level(level).games, games=rows,
            gpu_cost_per_hour=self.profile.gpu_cost_per_hour,
            extra={"level_state": auto.get("state", level), "autoscaler": auto,
                   "gpu_sample": self.last_gpu,  # the NVML numbers as sampled, for --json
                   "pressure": self.last_pressure,  # PSI, memory, swap, OOM kills (pressure.py)
                   "summary": self.status_line(), "counts": self.manager.counts(),
                   "box": self.store.box,
                   "fleet": None if self.manager.fleet is None else {
                       "held": {g: lease.token for g, lease in self.manager.fleet.held.items()},
                       "games": sorted(self.manager.fleet.games),
                       "renew_failures": self.manager.fleet.renew_failures,
                       "claim_failures": self.manager.fleet.claims.failures,
                       "lease_s": self.manager.fleet.leases.lease_s}},
        ).to_dict()  # fmt: skip

    def cmd_top(self, args: dict[str, Any]) -> dict[str, Any]:
        """The newest telemetry samples, per trainer and for the host (``atarictl top``)."""
        at, samples = self.last_samples or (None, {})
        live = [g for g in self.manager.games.values() if g.proc is not None]
        return build_top(
            source="daemon", now=self.clock.now(), sampled_at=at, host=samples.get("host"),
            processes=samples.get("process"), gpu=samples.get("gpu"),
            games={g.proc.pid: g.name for g in live if g.proc is not None},
            daemon_pid=os.getpid(),
            states={g.name: g.state.value for g in self.manager.games.values()},
        )  # fmt: skip

    def cmd_start(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._operator("start", args)

    def cmd_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._operator("stop", args)

    def cmd_restart(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._operator("restart", args)

    def cmd_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            profile = load_profile(self.profile.path)
        except ProfileError as e:
            log.error("reload rejected; the running profile stays", error=str(e))
            raise CommandError(ReplyCode.BAD_PROFILE, str(e)) from None
        # Every part checks the new profile first; only when all accept does any of them move.
        # A part moved alone (the level source on a new ladder, the manager on the old levels)
        # would fail every later pass.
        try:
            check_levels(profile)
            level_commit, changes = self.level_source.prepare_reload(profile)
            commits = [level_commit, *(prepare(profile) for prepare in self.on_reload)]
        except ValueError as e:
            msg = f"{profile.path}: {e}; the running profile stays"
            log.error("reload rejected; the running profile stays", error=str(e))
            raise CommandError(ReplyCode.BAD_PROFILE, msg) from None
        self.profile = profile
        self.evals.settings = profile.eval
        for commit in commits:
            commit()  # the autoscaler adopts the new policy (and may move its state)
        # The level first (the old one may be gone from the profile), then the games; slots
        # fill only once a level change has drained.
        before = self.manager.level
        self._sync_level("reload")
        # Same level, edited settings: the running games would keep the old ones, so restart
        # them like a level change does.
        same = self.manager.level == before and not self.stopping
        if same and settings_changed(self.manager.profile, profile, before):
            n = self.manager.change_level(before, "reload: settings changed")
            changes.append(f"level {before} settings changed: {n} running games restart")
        changes += self.manager.set_profile(profile)
        self._record("reload: " + ("; ".join(changes) or "no game changes"), "operator")
        return {"profile": profile.path, "changes": changes}

    def cmd_shutdown(self, args: dict[str, Any]) -> dict[str, Any]:
        self.begin_shutdown("operator shutdown")
        return {"stopping": True}

    # ------------------------------------------------------------------ shutdown

    def begin_shutdown(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.side_jobs.stop_all()
        n = self.manager.shutdown(reason)
        log.info("shutting down: graceful stop of every trainer in parallel", reason=reason,
                 trainers=n, stop_grace=self.profile.stop_grace)  # fmt: skip
        self._record(f"shutdown: {reason}", "daemon")
        self.notifier.stopping(f"stopping · {n} trainers checkpointing")
        # SIGKILL after stop_grace, then reaping: ask systemd for that much time.
        self.notifier.extend_timeout(self.profile.stop_grace + 15)

    def _finish_shutdown(self) -> None:
        try:
            self.manager.release_fleet()
        except StoreError as e:
            log.warning("could not hand the games back to the fleet; they move after fleet.lease",
                        error=str(e))  # fmt: skip
        if self.daemon_run_id is not None:
            self.store.daemon_stopped(self.daemon_run_id, self.clock.now(), clean=True)
        log.info("all trainers stopped; daemon exits")
        with self._exit_lock:
            self.stopped = True
        # Requests that came in during this last pass get their answer now, not a timeout.
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if isinstance(event, Request):
                event.reply.put(_SHUTTING_DOWN)
