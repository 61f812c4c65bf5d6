"""The autoscaler's reads and writes in the store: level_state, decisions, boots, daemon_runs, runs.

Queries use the store's SQLAlchemy Core tables; every write is one short transaction so a crash
between two writes never leaves a half-recorded decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, insert, select

from daemon.autoscaler.boots import BootRecord, PreviousRun
from daemon.store.schema import (
    CRASH_OUTCOMES,
    IS_REBOOT,
    boots,
    daemon_runs,
    decisions,
    level_state,
    runs,
)
from daemon.store.store import upsert

LEVEL_STATE_ID = 1

# Built once: these run on every stability check and building the expressions costs more than
# running them.
_REBOOTS_SINCE = (
    select(boots.c.detected_at)
    .where(IS_REBOOT, boots.c.detected_at >= bindparam("since"))
    .order_by(boots.c.detected_at)
)
# A crash is a run that died on its own: the process manager records that as runs.outcome.
_CRASHES_SINCE = (
    select(runs.c.ended_at)
    .where(
        runs.c.ended_at.is_not(None),
        runs.c.ended_at >= bindparam("since"),
        runs.c.outcome.in_(CRASH_OUTCOMES),
    )
    .order_by(runs.c.ended_at)
)


@dataclass(frozen=True)
class StoredState:
    state: str
    entered_at: float
    pinned: str | None
    cooldown_s: float
    failed_promotions: int
    stable_since: float | None


@dataclass(frozen=True)
class DecisionRow:
    at: float
    kind: str
    from_state: str | None
    to_state: str | None
    reason: str
    game: str | None = None


def engine_of(store: Any) -> Engine:
    """The store's engine; accepts a bare Engine too (tools and tests that own one)."""
    if isinstance(store, Engine):
        return store
    return store.engine  # type: ignore[no-any-return]


class AutoscalerRepository:
    def __init__(self, store: Any) -> None:
        self._engine = engine_of(store)

    # -- level state --------------------------------------------------------------------------
    def load_state(self) -> StoredState | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(level_state).where(level_state.c.id == LEVEL_STATE_ID)
            ).first()
        if row is None:
            return None
        return StoredState(
            state=row.state,
            entered_at=float(row.entered_at),
            pinned=row.pinned,
            cooldown_s=float(row.cooldown_s or 0.0),
            failed_promotions=int(row.failed_promotions or 0),
            stable_since=row.stable_since,
        )

    def save(self, state: StoredState, now: float, decision: DecisionRow | None = None) -> None:
        """Upsert the singleton state row, and the decision behind it, in one transaction."""
        values = {
            "state": state.state,
            "entered_at": state.entered_at,
            "pinned": state.pinned,
            "cooldown_s": state.cooldown_s,
            "failed_promotions": state.failed_promotions,
            "stable_since": state.stable_since,
            "updated_at": now,
        }
        with self._engine.begin() as conn:
            upsert(conn, level_state, {"id": LEVEL_STATE_ID}, values)
            if decision is not None:
                conn.execute(insert(decisions).values(**_decision_values(decision)))

    def decisions(
        self, kinds: tuple[str, ...] = ("level", "operator", "boot"), limit: int | None = None
    ) -> list[DecisionRow]:
        """Oldest first; with ``limit``, only the newest ``limit`` rows."""
        query = select(decisions).where(decisions.c.kind.in_(kinds)).order_by(decisions.c.id.desc())
        with self._engine.connect() as conn:
            rows = conn.execute(query.limit(limit) if limit else query).all()[::-1]
        return [
            DecisionRow(r.at, r.kind, r.from_state, r.to_state, r.reason or "", r.game)
            for r in rows
        ]

    # -- facts ----------------------------------------------------------------------------------
    def reboot_times(self, since: float) -> tuple[float, ...]:
        with self._engine.connect() as conn:
            rows = conn.execute(_REBOOTS_SINCE, {"since": since}).all()
        return tuple(float(r.detected_at) for r in rows)

    def crash_times(self, since: float) -> tuple[float, ...]:
        with self._engine.connect() as conn:
            rows = conn.execute(_CRASHES_SINCE, {"since": since}).all()
        return tuple(float(r.ended_at) for r in rows)

    # -- boots ----------------------------------------------------------------------------------
    def previous_run(self) -> PreviousRun:
        with self._engine.connect() as conn:
            last_boot = conn.execute(
                select(boots.c.boot_id).order_by(boots.c.detected_at.desc(), boots.c.id.desc())
            ).first()
            if last_boot is None:
                return PreviousRun(None, None, None)
            run = conn.execute(
                select(daemon_runs)
                .where(daemon_runs.c.boot_id == last_boot.boot_id)
                .order_by(daemon_runs.c.started_at.desc(), daemon_runs.c.id.desc())
            ).first()
        if run is None:
            return PreviousRun(last_boot.boot_id, None, None)
        heartbeat = run.last_heartbeat if run.last_heartbeat is not None else run.started_at
        if run.stopped_at is not None:
            heartbeat = max(heartbeat, run.stopped_at)
        return PreviousRun(last_boot.boot_id, float(heartbeat), bool(run.clean_shutdown))

    def add_boot(self, record: BootRecord, reason: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                insert(boots).values(
                    boot_id=record.boot_id,
                    detected_at=record.detected_at,
                    kernel_boot_time=record.kernel_boot_time,
                    previous_boot_id=record.previous_boot_id,
                    last_heartbeat_before=record.last_heartbeat_before,
                    downtime_s=record.downtime_s,
                    previous_clean_shutdown=record.previous_clean_shutdown,
                )
            )
            conn.execute(
                insert(decisions).values(
                    at=record.detected_at,
                    kind="boot",
                    from_state=record.previous_boot_id,
                    to_state=record.boot_id,
                    reason=reason,
                )
            )


def _decision_values(d: DecisionRow) -> dict[str, Any]:
    return {
        "at": d.at,
        "kind": d.kind,
        "game": d.game,
        "from_state": d.from_state,
        "to_state": d.to_state,
        "reason": d.reason,
    }
