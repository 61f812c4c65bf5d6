"""Pressure guards: the ``shed`` edge, the bottom-rung pause and the promotion guard.

Pure functions of (readings, policy, now) plus one small holder of recent readings
(``PressureWatch``); nothing here reads a clock, a file or the database. The supervisor turns
each telemetry tick into a ``Reading`` (``reading_from``) and hands it to the autoscaler, whose
machine asks these functions whether ``shed`` may fire and whether the next rung fits.

A signal sheds only when it has been over its threshold in every reading for ``shed_after`` (the
level's own readings: a shed or promotion starts the count again), so one spike never moves the
level. Every reason names the signal, the value, the threshold and the setting.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.autoscaler.policy import fmt_duration
from daemon.config import PressurePolicy, Profile
from daemon.pressure import memory_headroom, psi_value
from daemon.telemetry import THROTTLE_BITS

# NVML throttle reasons that mean the GPU is at a limit: the ones telemetry names.
_AT_LIMIT = frozenset(THROTTLE_BITS.values())
SIGNALS = ("memory_psi", "mem_available", "gpu_memory", "gpu_limit")
_KEEP_S = 6 * 3600.0  # readings older than this are never needed (shed_after is minutes)


@dataclass(frozen=True)
class GpuReading:
    index: int
    mem_used_mb: float
    mem_total_mb: float
    temperature_c: float | None = None
    slowdown_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    throttle: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reading:
    """One telemetry tick, reduced to what the guards need."""

    at: float
    mem_psi_full: float | None = None  # memory PSI full avg10, %
    available_mb: float | None = None  # the tighter of the host and the cgroup limit
    total_mb: float | None = None
    memory_scope: str = "MemAvailable"  # which one: the host's, or the cgroup limit's headroom
    gpus: tuple[GpuReading, ...] = ()
    trainers_rss_mb: tuple[float, ...] = ()  # one per live trainer
    trainers_gpu_mb: tuple[float, ...] = ()  # one per trainer NVML lists

    @property
    def mem_available_pct(self) -> float | None:
        if self.available_mb is None or not self.total_mb:
            return None
        return 100.0 * self.available_mb / self.total_mb


def reading_from(
    at: float, pressure: Mapping[str, Any] | None, gpu: Mapping[str, Any] | None,
    process: Mapping[str, Any] | None, trainer_pids: Iterable[int],
) -> Reading:  # fmt: skip
    """The telemetry samples (daemon/pressure.py, daemon/telemetry.py) as a ``Reading``."""
    head = memory_headroom(dict(pressure or {}))
    limit = (pressure or {}).get("cgroup_mem_limit_mb")
    scope = "cgroup memory headroom" if head and limit and head[1] == float(limit) else None
    gpus = []
    gpu_procs: dict[str, float] = {}
    for g in (gpu or {}).get("gpus") or [] if (gpu or {}).get("gpu") == "ok" else []:
        gpus.append(GpuReading(
            index=int(g.get("index", len(gpus))), mem_used_mb=float(g["mem_used_mb"]),
            mem_total_mb=float(g["mem_total_mb"]), temperature_c=g.get("temperature_c"),
            slowdown_c=g.get("temperature_slowdown_c"), power_w=g.get("power_w"),
            power_limit_w=g.get("power_limit_w"), throttle=tuple(g.get("throttle_reasons") or ()),
        ))  # fmt: skip
        for pid, mb in (g.get("processes") or {}).items():
            gpu_procs[pid] = gpu_procs.get(pid, 0.0) + float(mb)
    pids = [str(p) for p in trainer_pids]
    rss = tuple(float(process[p]["rss_mb"]) for p in pids if p in (process or {}))
    return Reading(
        at=at, mem_psi_full=psi_value(dict(pressure or {}), "memory", "full", "avg10"),
        available_mb=head[0] if head else None, total_mb=head[1] if head else None,
        memory_scope=scope or "MemAvailable",
        gpus=tuple(gpus), trainers_rss_mb=rss,
        trainers_gpu_mb=tuple(gpu_procs[p] for p in pids if p in gpu_procs),
    )  # fmt: skip


def signals_over(r: Reading, p: PressurePolicy) -> dict[str, str]:
    """Each signal over its threshold in this reading, with the words for the reason."""
    out: dict[str, str] = {}
    if r.mem_psi_full is not None and r.mem_psi_full > p.memory_psi_full_pct:
        out["memory_psi"] = (f"memory PSI full avg10 {r.mem_psi_full:.1f}% > "
                             f"memory_psi_full_pct={p.memory_psi_full_pct:g}%")  # fmt: skip
    avail = r.mem_available_pct
    if avail is not None and avail < p.mem_available_min_pct:
        out["mem_available"] = (f"{r.memory_scope} {avail:.1f}% of {r.total_mb:.0f} MiB < "
                                f"mem_available_min_pct={p.mem_available_min_pct:g}%")  # fmt: skip
    for g in r.gpus:
        pct = 100.0 * g.mem_used_mb / g.mem_total_mb if g.mem_total_mb else 0.0
        if pct > p.gpu_memory_max_pct and "gpu_memory" not in out:
            out["gpu_memory"] = (f"GPU{g.index} memory {pct:.1f}% > "
                                 f"gpu_memory_max_pct={p.gpu_memory_max_pct:g}%")  # fmt: skip
        if "gpu_limit" in out:
            continue
        limited = [t for t in g.throttle if t in _AT_LIMIT]
        if p.gpu_throttle and limited:
            out["gpu_limit"] = f"GPU{g.index} throttled ({', '.join(limited)}; gpu_throttle=true)"
        elif (p.gpu_throttle and g.temperature_c is not None and g.slowdown_c
              and g.temperature_c >= g.slowdown_c):  # fmt: skip
            out["gpu_limit"] = (f"GPU{g.index} at {g.temperature_c:g}C >= its slowdown "
                                f"temperature {g.slowdown_c:g}C (gpu_throttle=true)")  # fmt: skip
        elif g.power_w is not None and g.power_limit_w:
            ppct = 100.0 * g.power_w / g.power_limit_w
            if ppct >= p.gpu_power_limit_pct:
                out["gpu_limit"] = (
                    f"GPU{g.index} power {g.power_w:.0f}/{g.power_limit_w:.0f} W"
                    f" >= gpu_power_limit_pct={p.gpu_power_limit_pct:g}%"
                )
    return out


@dataclass(frozen=True)
class Pressure:
    signal: str
    detail: str
    lasted_s: float

    def reason(self, p: PressurePolicy) -> str:
        return (f"{self.detail} for {fmt_duration(round(self.lasted_s))} "
                f">= shed_after={fmt_duration(p.shed_after)}")  # fmt: skip


def sustained(
    readings: Iterable[Reading], p: PressurePolicy, now: float, since: float, need_s: float
) -> Pressure | None:
    """The first signal (in ``SIGNALS`` order) over its threshold in every reading of the last
    ``need_s`` seconds, counting only readings at or after ``since``; None otherwise. The newest
    reading must be fresh (within ``shed_after``): stale telemetry never sheds."""
    rs = sorted((r for r in readings if since <= r.at <= now), key=lambda r: r.at)
    if not rs or now - rs[-1].at > p.shed_after:
        return None
    overs = [signals_over(r, p) for r in rs]
    for sig in SIGNALS:
        if sig not in overs[-1]:
            continue
        start = rs[-1].at
        for r, over in zip(reversed(rs), reversed(overs), strict=True):
            if sig not in over:
                break
            start = r.at
        if rs[-1].at - start >= need_s:
            return Pressure(sig, overs[-1][sig], rs[-1].at - start)
    return None


def calm_for(readings: Iterable[Reading], p: PressurePolicy, now: float, since: float,
             need_s: float) -> bool:
    """No signal over its threshold in any reading of the last ``need_s`` seconds (counting from
    ``since`` at the earliest), with fresh telemetry: pressure has really gone."""
    rs = sorted((r for r in readings if since <= r.at <= now), key=lambda r: r.at)
    if not rs or now - rs[-1].at > p.shed_after:
        return False
    calm_from = since
    for r in rs:
        if signals_over(r, p):
            calm_from = r.at
    return rs[-1].at - calm_from >= need_s


# -- the promotion guard ---------------------------------------------------------------------


@dataclass(frozen=True)
class LevelSize:
    games: int
    per_game_mb: float  # the profile's estimate (``Level.memory_gib`` / games)


def level_sizes(profile: Profile) -> dict[str, LevelSize]:
    return {
        lv.name: LevelSize(lv.games, lv.memory_gib(profile.level_algo(lv)) * 1024 / lv.games)
        for lv in profile.levels
    }


@dataclass(frozen=True)
class Projection:
    level: str
    games: int
    basis: str  # "measured" or "profile estimate"
    per_trainer_mb: float
    projected_mb: float
    room_mb: float | None  # None: headroom unknown (no memory reading yet)
    gpu_projected_mb: float | None = None
    gpu_room_mb: float | None = None

    @property
    def fits(self) -> bool:
        mem = self.room_mb is None or self.projected_mb <= self.room_mb
        gpu = self.gpu_room_mb is None or (self.gpu_projected_mb or 0.0) <= self.gpu_room_mb
        return mem and gpu

    @property
    def headroom_mb(self) -> float | None:
        return None if self.room_mb is None else self.room_mb - self.projected_mb

    def text(self) -> str:
        gib = 1024.0
        out = (
            f"projected footprint of {self.level} {self.projected_mb / gib:.2f} GiB "
            f"({self.games} trainers x {self.per_trainer_mb / gib:.2f} GiB, {self.basis})"
        )
        if self.room_mb is not None:
            out += (f", room {self.room_mb / gib:.2f} GiB, headroom "
                    f"{(self.room_mb - self.projected_mb) / gib:+.2f} GiB")  # fmt: skip
        if self.gpu_projected_mb is not None and self.gpu_room_mb is not None:
            out += (f"; GPU {self.gpu_projected_mb / gib:.2f} GiB of "
                    f"{self.gpu_room_mb / gib:.2f} GiB room")  # fmt: skip
        return out


def project(
    r: Reading | None, current: str, dest: str, sizes: Mapping[str, LevelSize], reserve_pct: float
) -> Projection | None:
    """What ``dest`` would need, from what the trainers of ``current`` use now (RSS and GPU
    memory per trainer, scaled by the two levels' estimated per-game size) against the room
    there is: available memory plus what the trainers hold now (they stop for the change),
    less ``guard_reserve_pct`` of the total. Without running trainers, the profile's estimate."""
    if dest not in sizes or current not in sizes:
        return None
    nxt, cur = sizes[dest], sizes[current]
    scale = nxt.per_game_mb / cur.per_game_mb if cur.per_game_mb > 0 else 1.0
    if r is not None and r.trainers_rss_mb:
        measured = sum(r.trainers_rss_mb) / len(r.trainers_rss_mb)
        per, basis = measured * scale, (f"measured {measured / 1024:.2f} GiB per trainer at "
                                        f"{current} x {scale:.2f} for {dest}'s shape")  # fmt: skip
    else:
        per, basis = nxt.per_game_mb, "profile estimate (no trainer measured yet)"
    room = None
    if r is not None and r.available_mb is not None and r.total_mb:
        room = r.available_mb + sum(r.trainers_rss_mb) - r.total_mb * reserve_pct / 100.0
    gpu_proj = gpu_room = None
    if r is not None and r.gpus and r.trainers_gpu_mb:
        per_gpu = sum(r.trainers_gpu_mb) / len(r.trainers_gpu_mb) * scale
        total = sum(g.mem_total_mb for g in r.gpus)
        free = sum(g.mem_total_mb - g.mem_used_mb for g in r.gpus)
        gpu_proj = per_gpu * nxt.games
        gpu_room = free + sum(r.trainers_gpu_mb) - total * reserve_pct / 100.0
    return Projection(dest, nxt.games, basis, per, per * nxt.games, room, gpu_proj, gpu_room)


# -- what the autoscaler keeps -----------------------------------------------------------------


@dataclass
class PressureWatch:
    """Recent readings and the shed bookkeeping, held by the autoscaler (in memory: after a
    daemon restart pressure must be seen again before anything sheds)."""

    policy: PressurePolicy
    readings: deque[Reading] | None = None
    sizes: dict[str, LevelSize] | None = None
    shed_until: float = 0.0  # no promotion before this (a shed counts as a failed promotion)
    paused_at: float | None = None  # the last bottom-rung pause (or resume)
    paused: int = 0  # games paused and not resumed yet (a level change resumes them all)
    refused_at: float | None = None  # the last refused promotion written to the decisions

    def __post_init__(self) -> None:
        if self.readings is None:
            self.readings = deque()

    def add(self, r: Reading) -> None:
        assert self.readings is not None
        self.readings.append(r)
        while self.readings and self.readings[0].at < r.at - _KEEP_S:
            self.readings.popleft()

    @property
    def latest(self) -> Reading | None:
        return self.readings[-1] if self.readings else None

    def pressure(self, now: float, since: float, need_s: float | None = None) -> Pressure | None:
        need = self.policy.shed_after if need_s is None else need_s
        return sustained(self.readings or (), self.policy, now, since, need)

    def projection(self, current: str, dest: str | None) -> Projection | None:
        if dest is None or not self.sizes:
            return None
        return project(self.latest, current, dest, self.sizes, self.policy.guard_reserve_pct)

    def blocks_promotion(self, current: str, dest: str, now: float) -> bool:
        if now < self.shed_until:
            return True
        proj = self.projection(current, dest)
        return bool(self.policy.guard and proj is not None and not proj.fits)

    def status(self, current: str, dest: str | None, now: float) -> dict[str, Any]:
        proj = self.projection(current, dest)
        latest = self.latest
        return {
            "thresholds": {k: getattr(self.policy, k) for k in self.policy.__dataclass_fields__},
            "over": signals_over(latest, self.policy) if latest is not None else {},
            "shed_cooldown_until": self.shed_until if self.shed_until > now else None,
            "projection": None if proj is None else {
                "text": proj.text(), "fits": proj.fits, "projected_mb": proj.projected_mb,
                "room_mb": proj.room_mb, "headroom_mb": proj.headroom_mb, "level": proj.level,
            },
        }  # fmt: skip
