"""The Prometheus endpoint (``prometheus-client``): ``/metrics`` on ``metrics.listen``.

The numbers come from the status shape ``atarictl status`` prints (``Supervisor.cmd_status``,
``daemon/status.py``), never from a copy of its logic. The supervisor's main loop builds a
``Snapshot`` and publishes it here (``Publisher.refresh``); the HTTP thread's collector only reads
the newest snapshot (one reference, swapped whole), so a scrape takes no lock the loop holds and
never waits for the loop. The loop rebuilds the snapshot every ``REFRESH`` seconds (5 s), scraped
or not: a scrape at 1/s then costs only its rendering (measured by ``python -m
daemon.metrics_bench``), and ``atari_daemon_snapshot_timestamp_seconds`` says how old it is.

Counters that the status shape does not hold come from the store (ended runs per outcome,
autoscaler moves) and from the loop itself (pass time, failed job passes). Names follow the
Prometheus conventions: base units (seconds, bytes, ratios), ``_total`` on counters.
"""

from __future__ import annotations

import math
import platform
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import structlog
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from daemon.config.schema import parse_listen

log = structlog.get_logger("daemon.metrics")

REFRESH = 5.0  # seconds between snapshots: a third of Prometheus's shortest usual interval
STATES = ("QUEUED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "STOPPED", "DONE", "FATAL")
OUTCOMES = ("crash", "stopped", "done", "unknown")
MIB = 2**20
JOBS = ("health", "stability", "telemetry", "report")  # always shown, at 0 until one fails


@dataclass(frozen=True)
class Snapshot:
    """What one scrape shows, built in the main loop."""

    status: dict[str, Any]  # Supervisor.cmd_status({}): Status.to_dict()
    restarts: dict[tuple[str, str], int]  # (game, outcome) -> ended runs
    promotions: int
    fallbacks: int
    procs: dict[str, dict[str, float]]  # pid -> {cpu_pct, rss_mb}, the last telemetry sample
    boot_time: float
    at: float  # unix time it was built


@dataclass
class LoopStats:
    """Written by the main loop only; read (a few ints and floats) by the HTTP thread."""

    passes: int = 0
    pass_seconds: float = 0.0
    job_errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def job_failed(self, job: str) -> None:
        with self.lock:  # also called from the scheduler's thread
            self.job_errors[job] = self.job_errors.get(job, 0) + 1


class Publisher:
    """Holds the newest snapshot. ``refresh`` runs in the main loop; ``snapshot`` anywhere."""

    def __init__(self, build: Callable[[], Snapshot], monotonic: Callable[[], float]) -> None:
        self._build, self._mono = build, monotonic
        self._snap: Snapshot | None = None
        self._built_at = -math.inf
        self.loop = LoopStats()

    def refresh(self, force: bool = False) -> None:
        now = self._mono()
        if force or now - self._built_at >= REFRESH:
            self._built_at = now
            try:
                self._snap = self._build()
            except Exception:
                # A scrape shows the previous snapshot (its age says so); supervision goes on.
                log.exception("metrics snapshot failed")
                self.loop.job_failed("metrics")

    def snapshot(self) -> Snapshot | None:
        return self._snap


def _game_labels(row: dict[str, Any]) -> list[str]:
    return [str(row["game"])]


class StatusCollector(Collector):
    """Turns the newest snapshot into metric families at scrape time."""

    def __init__(self, publisher: Publisher, version: str) -> None:
        self.publisher, self.version = publisher, version

    def collect(self) -> Iterator[Metric]:
        snap = self.publisher.snapshot()
        yield from self._daemon(snap)
        if snap is None:
            return
        yield from self._games(snap)
        yield from self._autoscaler(snap)
        yield from self._gpu(snap.status.get("gpu"))
        yield from _fleet_metrics(snap.status.get("fleet"))

    def _daemon(self, snap: Snapshot | None) -> Iterator[Metric]:
        up = GaugeMetricFamily("atari_daemon_up", "1 while the supervisor daemon serves metrics")
        up.add_metric([], 1)
        yield up
        info = InfoMetricFamily("atari_daemon_build", "version of the daemon and its Python")
        info.add_metric([], {"version": self.version, "python": platform.python_version()})
        yield info
        loop = self.publisher.loop
        s = SummaryMetricFamily("atari_daemon_loop_pass_seconds",
                                "time of the supervisor main-loop passes (events, reaping, "
                                "filling slots), without the wait for events")  # fmt: skip
        s.add_metric([], count_value=loop.passes, sum_value=loop.pass_seconds)
        yield s
        errors = CounterMetricFamily(
            "atari_daemon_job_errors",
            "scheduler job passes that raised (the scheduler and the loop go on)",
            labels=["job"],
        )
        with loop.lock:
            failed = dict(loop.job_errors)
        for job in sorted({*JOBS, *failed}):
            errors.add_metric([job], failed.get(job, 0))
        yield errors
        if snap is None:
            return
        d = snap.status.get("daemon") or {}
        yield _gauge("atari_daemon_start_time_seconds", "unix time the daemon started",
                     d.get("started_at"))  # fmt: skip
        yield _gauge("atari_daemon_snapshot_timestamp_seconds", "unix time the main loop built "
                     "the numbers of this scrape (a stuck loop stops it)", snap.at)  # fmt: skip
        yield _gauge("atari_host_boot_time_seconds", "kernel boot time (a change is a reboot)",
                     snap.boot_time)  # fmt: skip
        yield _gauge(
            "atari_total_eta_seconds",
            "time until every planned game reaches its target (atarictl status total ETA)",
            snap.status.get("total_eta_s"),
        )

    def _games(self, snap: Snapshot) -> Iterator[Metric]:
        rows: list[dict[str, Any]] = list(snap.status.get("games") or [])
        state = StateSetMetricFamily("atari_game_state", "supervisord-style state of each game",
                                     labels=["game"])  # fmt: skip
        for r in rows:
            state.add_metric(_game_labels(r), {s: r["state"] == s for s in STATES})
        yield state
        per_game = [
            ("atari_game_target_episodes", "target number of real episodes", "target"),
            ("atari_game_avg100_return", "mean unclipped return of the last 100 episodes",
             "avg100"),
            ("atari_game_best_avg100_return", "best avg100 so far (the best model's score)",
             "best"),
            ("atari_game_episodes_per_hour", "recent episode rate", "episodes_per_hour"),
            ("atari_game_eta_seconds", "time to the target at the current rate (running games)",
             "eta_s"),
            ("atari_game_work_left_seconds", "training time left at the last known rate",
             "work_left_s"),
            ("atari_game_last_checkpoint_age_seconds", "age of the newest checkpoint",
             "checkpoint_age_s"),
            ("atari_game_uptime_seconds", "time the current trainer has been up", "uptime_s"),
        ]  # fmt: skip
        yield _counter_rows("atari_game_episodes", "real game episodes finished, across resumes",
                            rows, "episodes")  # fmt: skip
        for name, doc, key in per_game:
            fam = GaugeMetricFamily(name, doc, labels=["game"])
            for r in rows:
                if _finite(r.get(key)):
                    fam.add_metric(_game_labels(r), float(r[key]))
            yield fam
        restarts = CounterMetricFamily("atari_game_restarts", "trainer runs that ended, by "
                                       "outcome (crash, stopped, done, unknown)",
                                       labels=["game", "outcome"])  # fmt: skip
        for r in rows:
            for outcome in OUTCOMES:
                n = snap.restarts.get((r["game"], outcome), 0)
                restarts.add_metric([r["game"], outcome], n)
        yield restarts
        rss = GaugeMetricFamily(
            "atari_game_trainer_resident_memory_bytes",
            "trainer RSS at the last telemetry sample",
            labels=["game"],
        )
        cpu = GaugeMetricFamily("atari_game_trainer_cpu_ratio", "trainer CPU at the last "
                                "telemetry sample, in cores (1.0 = one core busy)",
                                labels=["game"])  # fmt: skip
        for r in rows:
            p = snap.procs.get(str(r.get("pid")))
            if r.get("pid") and p:
                rss.add_metric(_game_labels(r), float(p["rss_mb"]) * MIB)
                cpu.add_metric(_game_labels(r), float(p["cpu_pct"]) / 100.0)
        yield rss
        yield cpu

    def _autoscaler(self, snap: Snapshot) -> Iterator[Metric]:
        st = snap.status
        auto = st.get("autoscaler") or {}
        ladder = list(auto.get("ladder") or [])
        current = st.get("level_state") or st.get("level")
        states = [*ladder, "fallback"] if ladder else [str(current)]
        fam = StateSetMetricFamily("atari_autoscaler_state", "the autoscaler's state (a rung of "
                                   "the ladder, or fallback)")  # fmt: skip
        fam.add_metric([], {s: s == current for s in states})
        yield fam
        info = InfoMetricFamily("atari_autoscaler_level", "the level the games run at")
        info.add_metric([], {"level": str(st.get("level")), "state": str(current)})
        yield info
        level = st.get("level")
        yield _gauge("atari_autoscaler_level_rung", "rung of the running level on the ladder "
                     "(0 = lowest)", ladder.index(level) if level in ladder else None)  # fmt: skip
        entered = st.get("level_entered_at")
        yield _gauge(
            "atari_autoscaler_time_in_state_seconds",
            "time since the autoscaler entered its state",
            st["now"] - entered if _finite(entered) else None,
        )
        yield _gauge("atari_autoscaler_reboots_last_hour", "host reboots in the last hour",
                     st.get("boots_last_hour"))  # fmt: skip
        yield _gauge("atari_autoscaler_pinned", "1 while an operator pin holds the level",
                     1 if st.get("pinned") else 0)  # fmt: skip
        for name, doc, value in (
            ("atari_autoscaler_promotions", "automatic moves up the ladder", snap.promotions),
            ("atari_autoscaler_fallbacks", "automatic moves into fallback", snap.fallbacks),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c

    def _gpu(self, gpu: dict[str, Any] | None) -> Iterator[Metric]:
        yield _gauge("atari_gpu_available", "1 when NVML answers with at least one GPU",
                     1 if gpu and gpu.get("available") else 0)  # fmt: skip
        # The families are always there (empty without a GPU): dashboards and alerts that use
        # them stay valid on a box without NVML.
        gpus = (gpu.get("gpus") or []) if gpu and gpu.get("available") else []
        fams = [
            ("atari_gpu_utilization_ratio", "GPU busy time, 0..1", "util_pct", 0.01),
            ("atari_gpu_memory_used_bytes", "GPU memory used", "mem_used_mib", MIB),
            ("atari_gpu_memory_total_bytes", "GPU memory", "mem_total_mib", MIB),
            ("atari_gpu_temperature_celsius", "GPU temperature", "temp_c", 1.0),
            ("atari_gpu_power_watts", "GPU power draw", "power_w", 1.0),
        ]
        for name, doc, key, scale in fams:
            fam = GaugeMetricFamily(name, doc, labels=["gpu", "name"])
            for i, g in enumerate(gpus):
                if _finite(g.get(key)):
                    fam.add_metric([str(i), str(g.get("name"))], float(g[key]) * scale)
            yield fam


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _fleet_metrics(fleet: dict[str, Any] | None) -> Iterator[Metric]:
    """Fleet mode (docs/fleet.md): what this box holds, and how long its renewals and claims
    have been failing (alert before the leases run out). Outside fleet mode the families are
    there without samples, as the GPU ones on a CPU box."""
    fleet = fleet if isinstance(fleet, dict) else {}
    held = fleet.get("held") or {}
    yield _gauge("atari_fleet_games_held", "games this box holds a lease on",
                 len(held) if fleet else None)  # fmt: skip
    yield _gauge("atari_fleet_lease_seconds", "fleet.lease", fleet.get("lease_s"))
    yield _gauge("atari_fleet_renewal_failures", "lease renewals failed in a row (each health "
                 "check; the leases expire after fleet.lease)",
                 fleet.get("renew_failures"))  # fmt: skip
    yield _gauge("atari_fleet_claim_failures", "claim passes failed in a row",
                 fleet.get("claim_failures"))  # fmt: skip
    tokens = GaugeMetricFamily("atari_fleet_lease_token", "fencing token of each held lease",
                               labels=["game"])  # fmt: skip
    for game, token in sorted(held.items()):
        tokens.add_metric([game], float(token))
    yield tokens


def _gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc)
    if _finite(value):
        fam.add_metric([], float(value))
    return fam


def _counter_rows(name: str, doc: str, rows: list[dict[str, Any]], key: str) -> Metric:
    fam = CounterMetricFamily(name, doc, labels=["game"])
    for r in rows:
        if _finite(r.get(key)):
            fam.add_metric(_game_labels(r), float(r[key]))
    return fam


# ---------------------------------------------------------------------------- wiring


def snapshot_builder(sup: Any, clock: Any) -> Callable[[], Snapshot]:
    """What the main loop runs to build a snapshot: the status command's own result, plus the
    counters the store keeps."""
    from daemon.autoscaler.states import is_upward

    boot_time = psutil.boot_time()

    def build() -> Snapshot:
        status = sup.cmd_status({})
        ladder = list((status.get("autoscaler") or {}).get("ladder") or [])
        moves = sup.store.decision_moves("level")
        promotions = sum(n for (a, b), n in moves.items()
                         if a in ladder and b in ladder and is_upward(ladder, a, b))  # fmt: skip
        fallbacks = sum(n for (a, b), n in moves.items() if b == "fallback" and a != "fallback")
        return Snapshot(status=status, restarts=sup.store.run_outcome_counts(),
                        promotions=promotions, fallbacks=fallbacks,
                        procs=dict(getattr(sup, "last_procs", None) or {}),
                        boot_time=boot_time, at=float(status["now"]))  # fmt: skip

    return build


class Endpoint:
    """The HTTP server (prometheus-client's own) and its registry."""

    def __init__(self, publisher: Publisher, version: str) -> None:
        self.publisher = publisher
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(publisher, version))
        ProcessCollector(registry=self.registry)  # the daemon's own CPU seconds, RSS, fds
        PlatformCollector(registry=self.registry)
        self.server: Any = None
        self.address: tuple[str, int] | None = None

    def start(self, listen: str) -> bool:
        """Listen on ``HOST:PORT``; False (after one error line) when it cannot: the daemon
        supervises on without its endpoint rather than leave the games untrained."""
        from prometheus_client import start_http_server

        host, port = parse_listen(listen)
        try:
            self.server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            log.error("metrics endpoint not started; set metrics.listen to a free HOST:PORT or "
                      "null", listen=listen, error=f"{type(e).__name__}: {e}")  # fmt: skip
            return False
        bound = self.server.server_address
        self.address = (str(bound[0]), int(bound[1]))
        log.info("metrics endpoint listening", url=f"http://{listen_url(self.address)}/metrics")
        return True

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def listen_url(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def daemon_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atari-supervisor")
    except PackageNotFoundError:  # a bare source tree, not installed
        return "unknown"


def start_endpoint(sup: Any, clock: Any, listen: str | None, checks: Any = None) -> Endpoint | None:
    """Build the publisher, hook it into the supervisor's loop (and the scheduler's error
    listener) and start the HTTP server; None when ``metrics.listen`` is null or the address
    cannot be bound. ``metrics.listen`` takes effect at daemon start, not on a reload."""
    if listen is None:
        return None
    publisher = Publisher(snapshot_builder(sup, clock), time.monotonic)
    endpoint = Endpoint(publisher, daemon_version())
    if not endpoint.start(listen):
        return None
    sup.metrics = publisher
    publisher.refresh(force=True)
    if checks is not None:
        from apscheduler.events import EVENT_JOB_ERROR

        checks.scheduler.add_listener(lambda e: publisher.loop.job_failed(e.job_id),
                                      EVENT_JOB_ERROR)  # fmt: skip
    return endpoint
