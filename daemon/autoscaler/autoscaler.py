"""The autoscaler: loads facts from the store, fires at most one transition, persists the result.

It is the daemon's ``LevelSource``: ``current_level()`` is the level whose settings the games run.
All methods are called from the supervisor's main loop, never from a scheduler thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from daemon.autoscaler import policy as guards
from daemon.autoscaler.boots import (
    DEFAULT_BOOT_ID_PATH,
    BootRecord,
    describe,
    detect_boot,
    kernel_boot_time,
    read_boot_id,
)
from daemon.autoscaler.machine import AUTOMATIC_TRIGGERS, LevelModel, build_machine
from daemon.autoscaler.policy import Facts
from daemon.autoscaler.repository import AutoscalerRepository, DecisionRow, StoredState
from daemon.autoscaler.shedding import PressureWatch, Reading, calm_for, level_sizes
from daemon.autoscaler.states import (
    is_upward,
    level_of,
    next_rung,
    state_names,
    validate_ladder,
)
from daemon.clock import Clock
from daemon.config import AutoscalerPolicy, Profile
from daemon.level_source import Load
from daemon.store import StoreError

RECENT = 10  # decisions shown by ``atarictl level``
log = structlog.get_logger("daemon.autoscaler")


class PinError(ValueError):
    """An operator asked for a state the machine does not have; str() is one line."""


@dataclass(frozen=True)
class Decision:
    at: float
    kind: str  # 'level' (automatic move) | 'operator' (pin/unpin)
    trigger: str
    from_state: str
    to_state: str
    from_level: str
    to_level: str
    reason: str
    demotion: bool = False  # logged at warning; promotions and pins that climb at info

    @property
    def level_changed(self) -> bool:
        """Whether the games must restart: fallback runs light, so light <-> fallback does not."""
        return self.from_level != self.to_level


class Autoscaler:
    def __init__(
        self,
        policy: AutoscalerPolicy,
        store: Any,
        clock: Clock,
        *,
        start_level: str | None = None,
        boot_id_path: str | Path = DEFAULT_BOOT_ID_PATH,
    ) -> None:
        validate_ladder(policy.ladder)
        self.policy = policy
        self.clock = clock
        self.repo = AutoscalerRepository(store)
        self.boot_id_path = Path(boot_id_path)
        initial = start_level if start_level in policy.ladder else policy.ladder[0]
        self._model = LevelModel(policy)
        self._machine = build_machine(self._model, initial)
        self._entered_at = clock.now()
        self._cooldown_s = policy.cooldown
        self._failed = 0
        self._pinned: str | None = None
        self._restored = False
        # Pressure readings, the shed cooldown and the promotion guard (autoscaler/shedding.py).
        self.watch = PressureWatch(policy.pressure)
        # Decisions the store refused (a full disk): saved, in order, with the next save.
        self._unsaved: list[DecisionRow] = []
        self._saved_stable_since: float | None = None
        # The supervisor sets this once it exists (``LevelSource.load``); until then the load
        # is unknown and nothing is promoted (the check at daemon start only falls back).
        self.load: Callable[[], Load | None] = lambda: None

    # -- LevelSource ----------------------------------------------------------------------------
    def current_level(self) -> str:
        if self._model.level is None:
            raise RuntimeError("Autoscaler.restore(now) must run before current_level()")
        return self._model.level

    @property
    def state(self) -> str:
        return self._model.state

    # -- start-up ---------------------------------------------------------------------------------
    def record_boot(
        self, now: float | None = None, *, boot_id: str | None = None
    ) -> BootRecord | None:
        """Compare the kernel boot id with the last one stored; store and return a new boot."""
        now = self.clock.now() if now is None else now
        boot_id = read_boot_id(self.boot_id_path) if boot_id is None else boot_id
        record = detect_boot(boot_id, kernel_boot_time(), now, self.repo.previous_run())
        if record is None:
            log.info("boot unchanged; daemon restart on the same boot", boot_id=boot_id)
            return None
        reason = describe(record)
        self.repo.add_boot(record, reason)
        if record.is_reboot:
            log.warning(reason, boot_id=boot_id, downtime_s=record.downtime_s)
        else:
            log.info(reason, boot_id=boot_id)
        return record

    def restore(self, now: float | None = None) -> None:
        """Load the stored state (or start fresh), re-arm its entry side effect, apply the
        profile's pin. transitions does not run on_enter for the initial state, hence ``arm``."""
        now = self.clock.now() if now is None else now
        stored = self.repo.load_state()
        states = state_names(self.policy.ladder)
        if stored is None:
            self._entered_at = now
            self._save(
                now,
                self._row(
                    "level",
                    None,
                    self.state,
                    now,
                    f"start: no stored state; starting at {self.state}",
                ),
            )
        elif stored.state not in states:
            # The profile's ladder changed under a stored state: restart from the bottom rung.
            self._machine.set_state(self.policy.ladder[0])
            self._entered_at = now
            self._cooldown_s, self._failed = stored.cooldown_s, stored.failed_promotions
            self._pinned = stored.pinned if stored.pinned in states else None
            self._save(
                now,
                self._row(
                    "level",
                    stored.state,
                    self.state,
                    now,
                    f"restore: stored state {stored.state!r} is not in autoscaler.ladder "
                    f"{list(self.policy.ladder)}; starting at {self.state}",
                ),
            )
        else:
            self._machine.set_state(stored.state)
            self._entered_at = stored.entered_at
            self._cooldown_s = stored.cooldown_s or self.policy.cooldown
            self._failed = stored.failed_promotions
            self._pinned = stored.pinned if stored.pinned in states else None
        self._model.arm(self.state)
        self._restored = True
        self._restore_shed_cooldown()
        log.info(
            "autoscaler restored",
            state=self.state,
            runs_level=self.current_level(),
            entered_at=self._entered_at,
            pinned=self._pinned,
            cooldown_s=self._cooldown_s,
            failed_promotions=self._failed,
        )
        if self.policy.pinned is not None and self.policy.pinned != self._pinned:
            if self.policy.pinned in states:
                self.pin(self.policy.pinned, now, source="profile autoscaler.pinned")
            else:
                log.error(
                    f"autoscaler.pinned: {self.policy.pinned!r} is not on autoscaler.ladder "
                    f"{list(self.policy.ladder)}; pin a ladder level (ignored, not pinned)"
                )

    def reload(self, policy: AutoscalerPolicy, now: float | None = None) -> None:
        self.prepare_policy(policy, now)()

    def prepare_reload(self, profile: Profile) -> tuple[Callable[[], None], list[str]]:
        """The ``LevelSource`` verb: the profile's autoscaler section, checked, and its commit.
        The decision row of the commit says what moved, so the reply lists no change of its own."""
        commit = self.prepare_policy(profile.autoscaler)

        def commit_all() -> None:
            commit()
            self.set_levels(profile)

        return commit_all, []

    def prepare_policy(
        self, policy: AutoscalerPolicy, now: float | None = None
    ) -> Callable[[], None]:
        """Check a reloaded profile's policy and return its commit; nothing changes until the
        commit runs (a reload moves every part or none, ``Supervisor.cmd_reload``). The ladder
        may have changed, so the machine is rebuilt on the current state (or the bottom rung
        when that state is gone); counters, entry time and pin carry over where they still
        make sense. Raises ``ValueError`` for a policy the machine cannot take."""
        self._require_restored()
        if policy == self.policy:
            return lambda: None
        validate_ladder(policy.ladder)
        old = self.state
        states = state_names(policy.ladder)
        target = old if old in states else policy.ladder[0]
        model = LevelModel(policy)
        machine = build_machine(model, target)
        return lambda: self._adopt(policy, model, machine, old, target, states, now)

    def _adopt(
        self, policy: AutoscalerPolicy, model: LevelModel, machine: Any, old: str, target: str,
        states: tuple[str, ...], now: float | None,
    ) -> None:  # fmt: skip
        now = self.clock.now() if now is None else now
        self.policy, self._model, self._machine = policy, model, machine
        self.watch.policy = policy.pressure
        self._model.arm(target)  # a fresh machine does not enter its initial state either
        if target != old:
            self._entered_at = now
        if self._pinned not in states:
            self._pinned = None
        reason = f"reload: autoscaler policy updated; state {old} -> {target}"
        self._save(now, self._row("level", old, target, now, reason))
        (log.warning if target != old else log.info)(reason, runs_level=self.current_level())
        if policy.pinned is not None and policy.pinned != self._pinned and policy.pinned in states:
            self.pin(policy.pinned, now, source="profile autoscaler.pinned")

    # -- the stability check --------------------------------------------------------------------
    def facts(self, now: float) -> Facts:
        since = min(self._entered_at, now - max(self.policy.window, self.policy.crash_storm.window))
        load = self.load()
        level = level_of(self.state, self.policy.fallback_level)
        return Facts(
            state=self.state,
            entered_at=self._entered_at,
            reboots=self.repo.reboot_times(since),
            crashes=self.repo.crash_times(since),
            cooldown_s=self._cooldown_s,
            failed_promotions=self._failed,
            pinned=self._pinned,
            demand=None if load is None else load.demand(level),
            runs=self.repo.run_spans(level, self._entered_at) if load is not None else (),
            idle="" if load is None else load.idle,
        )

    def check(self, now: float | None = None) -> Decision | None:
        """Evaluate the guards; fire at most one transition. Returns the level decision, if any."""
        self._require_restored()
        if self._unsaved:
            self._save(self.clock.now() if now is None else now, None)
        now = self.clock.now() if now is None else now
        facts = self.facts(now)
        if guards.is_pinned(facts):
            return None
        if guards.is_due_for_cooldown_reset(facts, self.policy, now):
            reason = guards.reason_cooldown_reset(facts, self.policy, now)
            self._failed, self._cooldown_s = 0, self.policy.cooldown
            self._save(now, self._row("level", self.state, self.state, now, reason))
            log.info(reason, state=self.state)
            facts = self.facts(now)
        available = self._machine.get_triggers(self.state)
        for trigger in AUTOMATIC_TRIGGERS:
            source = self.state
            if trigger not in available:
                continue  # no such edge here, e.g. promote at the top rung
            if not getattr(self._model, trigger)(facts=facts, now=now, watch=self.watch):
                continue
            dest = self.state
            if trigger == "fall_back":
                reason = guards.reason_fall_back(facts, self.policy, now)
                self._cooldown_s, self._failed = guards.next_cooldown(facts, self.policy)
                reason += (
                    f"; cooldown {guards.fmt_duration(self._cooldown_s)} "
                    f"(failed promotions: {self._failed})"
                )
            elif trigger == "shed":
                reason = self._shed_reason(facts, source, dest, now)
            elif trigger == "recover":
                reason = guards.reason_recover(facts, self.policy, now, dest)
            else:
                reason = guards.reason_promote(facts, self.policy, now, dest)
            self._entered_at = now
            return self._decide("level", trigger, source, dest, now, reason)
        self._note_refused_promotion(facts, now)
        if guards.stable_since(facts, self.policy, now) != self._saved_stable_since:
            self._save(now, None)  # only when it moved: each commit is an fsync
        return None

    # -- pressure (autoscaler/shedding.py) --------------------------------------------------------
    def set_levels(self, profile: Profile) -> None:
        """The levels' estimated sizes, which the promotion guard scales measurements by."""
        self.watch.sizes = level_sizes(profile)

    def observe(self, now: float, reading: Reading) -> Decision | None:
        """One telemetry tick (the supervisor calls it after sampling): sustained pressure sheds
        a rung at once, without waiting for the stability check; at the bottom rung it asks the
        supervisor to pause the newest game (a ``pause`` decision, the level stays)."""
        self._require_restored()
        self.watch.add(reading)
        facts = self.facts(now)
        if guards.is_pinned(facts):
            return None
        source = self.state
        if "shed" in self._machine.get_triggers(source) and self._model.shed(
            facts=facts, now=now, watch=self.watch
        ):
            reason = self._shed_reason(facts, source, self.state, now)
            self._entered_at = now
            self.watch.paused, self.watch.paused_at = 0, None  # the level change resumes them
            return self._decide("level", "shed", source, self.state, now, reason)
        if level_of(source, self.policy.fallback_level) != self.policy.ladder[0]:
            return None
        p = self.policy.pressure
        since = max(facts.entered_at, self.watch.paused_at or facts.entered_at)
        found = self.watch.pressure(now, since, p.pause_after)
        if found is None:
            if self.watch.paused and calm_for(self.watch.readings or (), p, now, since,
                                              p.pause_after):  # fmt: skip
                # Pressure has gone for pause_after: one paused game gets its slot back.
                self.watch.paused -= 1
                self.watch.paused_at = now
                reason = (
                    f"resume: no pressure signal over its threshold for "
                    f"{guards.fmt_duration(p.pause_after)} (pause_after) at "
                    f"{self.current_level()}; one paused game gets its slot back"
                )
                return self._decide("level", "resume", source, source, now, reason)
            return None
        self.watch.paused_at = now
        self.watch.paused += 1
        reason = (
            f"pause: {found.detail} for {guards.fmt_duration(round(found.lasted_s))} at the "
            f"bottom rung {self.current_level()} >= pause_after="
            f"{guards.fmt_duration(p.pause_after)}; the newest game is checkpointed and requeued "
            "rather than let the kernel pick a victim"
        )
        return self._decide("level", "pause", source, source, now, reason)

    def _shed_reason(self, facts: Facts, source: str, dest: str, now: float) -> str:
        """A shed counts like a failed promotion: the cooldown grows, and no promotion before
        it ends, so a box that sheds at medium every time settles at light."""
        found = self.watch.pressure(now, facts.entered_at)
        assert found is not None  # the guard just saw it
        self._cooldown_s, self._failed = guards.next_cooldown(facts, self.policy)
        self.watch.shed_until = now + self._cooldown_s
        return (
            f"shed: {found.reason(self.policy.pressure)}; {source} -> {dest}; counts as a failed"
            f" promotion: no promotion for {guards.fmt_duration(self._cooldown_s)} (failed "
            f"promotions: {self._failed})"
        )

    def _promote_dest(self) -> str | None:
        for t in self._machine.get_transitions("promote", source=self.state):
            return str(t.dest)
        return None

    def _note_refused_promotion(self, facts: Facts, now: float) -> None:
        """A promotion that is due but blocked by the guard or a shed's cooldown is a decision
        too (with the projection and the headroom), written at most once per promote_after."""
        dest = self._promote_dest()
        if dest is None or guards.is_pinned(facts) or guards.is_unstable(facts, self.policy, now):
            return
        if not guards.has_been_stable(facts, self.policy, now):
            return
        if now < self.watch.shed_until:
            why = (f"promote refused: a shed's cooldown runs until "
                   f"{guards.fmt_duration(self.watch.shed_until - now)} from now")  # fmt: skip
        else:
            proj = self.watch.projection(self.state, dest)
            if proj is None or proj.fits or not self.policy.pressure.guard:
                return
            reserve = self.policy.pressure.guard_reserve_pct
            why = (f"promote refused: {proj.text()}: does not fit (guard_reserve_pct="
                   f"{reserve:g}%); staying at {self.state}")  # fmt: skip
        last = self.watch.refused_at
        if last is not None and now - last < self.policy.promote_after:
            return
        self.watch.refused_at = now
        self._save(now, self._row("level", self.state, self.state, now, why))
        log.warning(why, state=self.state)

    def _restore_shed_cooldown(self) -> None:
        """After a daemon restart a shed's cooldown still holds: its end is the last shed
        decision's time plus the stored cooldown."""
        for d in reversed(self.repo.decisions(limit=RECENT * 5)):
            if d.kind == "level" and d.reason.startswith("shed:"):
                self.watch.shed_until = d.at + self._cooldown_s
                return

    # -- operator override ----------------------------------------------------------------------
    def pin(self, level: str, now: float | None = None, *, source: str = "operator") -> Decision:
        self._require_restored()
        now = self.clock.now() if now is None else now
        states = state_names(self.policy.ladder)
        if level not in states:
            raise PinError(f"pin: unknown level {level!r}; choose one of {', '.join(states)}")
        origin = self.state
        self._pinned = level
        if origin != level:
            self._model.pin(facts=self.facts(now), now=now, target=level)
            self._entered_at = now
        reason = f"pin: {source} pinned {level}; automatic moves stop until unpin"
        return self._decide("operator", "pin", origin, self.state, now, reason)

    def unpin(self, now: float | None = None) -> Decision:
        self._require_restored()
        now = self.clock.now() if now is None else now
        was = self._pinned
        self._pinned = None
        reason = (
            f"unpin: operator released pin {was}; automatic moves resume at {self.state}"
            if was
            else f"unpin: nothing was pinned; automatic moves continue at {self.state}"
        )
        return self._decide("operator", "unpin", self.state, self.state, now, reason)

    # -- reporting ------------------------------------------------------------------------------
    def status(self, now: float | None = None) -> dict[str, Any]:
        self._require_restored()
        now = self.clock.now() if now is None else now
        facts = self.facts(now)
        what, due = guards.next_review(facts, self.policy, now,
                                       next_rung(self.policy.ladder, self.state),
                                       self.policy.ladder[0])  # fmt: skip
        since = guards.stable_since(facts, self.policy, now)
        return {
            "state": self.state,
            "level": self.current_level(),
            "ladder": list(self.policy.ladder),
            "entered_at": self._entered_at,
            "pinned": self._pinned,
            "cooldown_s": self._cooldown_s,
            "failed_promotions": self._failed,
            "stable_since": since,
            "next_decision_at": due,
            "next_decision": {"what": what, "at": due},
            "load": {
                "demand": facts.demand,
                "running": guards.running_at(facts, now),
                "loaded_s": guards.loaded_time(facts, since, now),
            },
            "reboots_last_hour": sum(1 for t in self.repo.reboot_times(now - 3600) if t <= now),
            "unstable": guards.is_unstable(facts, self.policy, now),
            "pressure": self.watch.status(self.state, self._promote_dest(), now),
        }

    # -- control commands (run in the supervisor's loop; PinError is a bad_request reply) --------
    def commands(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {"level": self._cmd_level, "pin": self._cmd_pin, "unpin": self._cmd_unpin}

    def _cmd_level(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {**self.status(), "recent": self.history(limit=RECENT)}

    def _cmd_pin(self, args: dict[str, Any]) -> dict[str, Any]:
        name = args.get("level")
        if not isinstance(name, str) or not name:
            raise PinError(
                'pin: args.level is required, e.g. {"cmd": "pin", "args": {"level": "light"}}'
            )
        return self._with_message(self.pin(name))

    def _cmd_unpin(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self._with_message(self.unpin())

    def _with_message(self, decision: Decision) -> dict[str, Any]:
        # The status plus the reason as "message", which atarictl prints.
        return {**self.status(decision.at), "message": decision.reason,
                "level_changed": decision.level_changed}  # fmt: skip

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Boots and level decisions, oldest first (the newest ``limit`` when given)."""
        return [asdict(d) for d in self.repo.decisions(limit=limit)]

    # -- internals ------------------------------------------------------------------------------
    def _require_restored(self) -> None:
        if not self._restored:
            raise RuntimeError("Autoscaler.restore(now) must run first")

    def _row(
        self, kind: str, source: str | None, dest: str, now: float, reason: str
    ) -> DecisionRow:
        # No trigger column: the reason starts with the trigger's word ("promote: ...").
        return DecisionRow(at=now, kind=kind, from_state=source, to_state=dest, reason=reason)

    def _decide(
        self, kind: str, trigger: str, source: str, dest: str, now: float, reason: str
    ) -> Decision:
        decision = Decision(
            at=now,
            kind=kind,
            trigger=trigger,
            from_state=source,
            to_state=dest,
            from_level=level_of(source, self.policy.fallback_level),
            to_level=level_of(dest, self.policy.fallback_level),
            reason=reason,
            demotion=source != dest and not is_upward(self.policy.ladder, source, dest),
        )
        self._save(now, self._row(kind, source, dest, now, reason))
        fields = {
            "from_state": source,
            "to_state": dest,
            "runs_level": decision.to_level,
            "restart_games": decision.level_changed,
        }
        if decision.demotion:
            log.warning(reason, **fields)
        else:
            log.info(reason, **fields)
        return decision

    def _save(self, now: float, decision: DecisionRow | None) -> None:
        """The state and the decision into the store. The machine has already moved, so a store
        that refuses the write (a full disk) must not undo or half-do it: the rows wait in
        memory and go in with the next save (the next stability check at the latest)."""
        if decision is not None:
            self._unsaved.append(decision)
        try:
            stable = guards.stable_since(self.facts(now), self.policy, now)
            state = StoredState(
                state=self.state, entered_at=self._entered_at, pinned=self._pinned,
                cooldown_s=self._cooldown_s, failed_promotions=self._failed, stable_since=stable,
            )  # fmt: skip
            while len(self._unsaved) > 1:
                self.repo.save(state, now, self._unsaved[0])
                self._unsaved.pop(0)
            self.repo.save(state, now, self._unsaved[0] if self._unsaved else None)
        except StoreError as e:
            log.warning("autoscaler state not saved; kept in memory and saved with the next check",
                        error=str(e), waiting=len(self._unsaved))  # fmt: skip
            return
        self._unsaved.clear()
        self._saved_stable_since = stable
