"""The autoscaler's view of the store: typed rows over ``Store`` methods, no SQL of its own.

``Store`` is the only gateway to the database (its methods map every driver error to a one-line
``StoreError``); this module only turns its rows into the dataclasses the autoscaler reasons
with, so a locked or corrupt database surfaces here exactly as it does everywhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from daemon.autoscaler.boots import BootRecord, PreviousRun
from daemon.store import Store

# The decisions the autoscaler reports as its own history (process rows belong to the manager).
OWN_KINDS = ("level", "operator", "boot")


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


class AutoscalerRepository:
    def __init__(self, store: Store) -> None:
        self._store = store

    # -- level state --------------------------------------------------------------------------
    def load_state(self) -> StoredState | None:
        row = self._store.level_state()
        if row is None:
            return None
        return StoredState(
            state=row["state"],
            entered_at=float(row["entered_at"]),
            pinned=row["pinned"],
            cooldown_s=float(row["cooldown_s"] or 0.0),
            failed_promotions=int(row["failed_promotions"] or 0),
            stable_since=row["stable_since"],
        )

    def save(self, state: StoredState, now: float, decision: DecisionRow | None = None) -> None:
        """The singleton state row and the decision behind it, in one transaction."""
        self._store.save_level_state(
            decision=asdict(decision) if decision is not None else None,
            updated_at=now,
            **asdict(state),
        )

    def decisions(
        self, kinds: tuple[str, ...] = OWN_KINDS, limit: int | None = None
    ) -> list[DecisionRow]:
        """Oldest first; with ``limit``, only the newest ``limit`` rows."""
        rows = self._store.decisions(kinds=kinds, limit=limit)
        return [
            DecisionRow(
                r["at"], r["kind"], r["from_state"], r["to_state"], r["reason"] or "", r["game"]
            )
            for r in rows
        ]

    # -- facts ----------------------------------------------------------------------------------
    def reboot_times(self, since: float) -> tuple[float, ...]:
        return self._store.reboot_times(since)

    def crash_times(self, since: float) -> tuple[float, ...]:
        return self._store.crash_times(since)

    def run_spans(self, level: str, since: float) -> tuple[tuple[float, float | None], ...]:
        return self._store.run_spans(level, since)

    # -- boots ----------------------------------------------------------------------------------
    def previous_run(self) -> PreviousRun:
        boot, run = self._store.last_boot_and_daemon_run()
        if boot is None:
            return PreviousRun(None, None, None)
        if run is None:
            return PreviousRun(boot["boot_id"], None, None)
        heartbeat = run["last_heartbeat"]
        if heartbeat is None:
            heartbeat = run["started_at"]
        if run["stopped_at"] is not None:
            heartbeat = max(heartbeat, run["stopped_at"])
        return PreviousRun(boot["boot_id"], float(heartbeat), bool(run["clean_shutdown"]))

    def add_boot(self, record: BootRecord, reason: str) -> None:
        """The boot row and its ``boot`` decision, in one transaction."""
        self._store.record_boot(
            record.boot_id,
            record.detected_at,
            reason=reason,
            kernel_boot_time=record.kernel_boot_time,
            previous_boot_id=record.previous_boot_id,
            last_heartbeat_before=record.last_heartbeat_before,
            downtime_s=record.downtime_s,
            previous_clean_shutdown=record.previous_clean_shutdown,
        )
