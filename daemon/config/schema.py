"""The profile schema: frozen dataclasses, one per YAML section.

Each field's metadata says how its YAML value is parsed (``kind``) and which range it must lie in,
so one generic walker (``yaml_walk``) validates every section, and ``docs/configuration.md`` is
checked against the same field list (``documented_fields``). Stdlib only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from daemon.resources import shipped_dir
from trainer import contract

# In the installed package (importlib.resources), or the checkout's top-level profiles/.
DEFAULT_PROFILE_DIR = shipped_dir("profiles")
DEFAULT_PROFILE = DEFAULT_PROFILE_DIR / "cpu-tiny.yaml"

# Memory estimate per trainer beyond its replay buffer: torch + envpool + Python (measured on the
# CPU build with the Nature CNN: ~1.2 GiB); per envpool Atari env ~ a few MiB of emulator state and
# frame stack. Deliberately generous: the point is to refuse a level that cannot fit at all.
TRAINER_BASE_GIB = 1.5
ENV_MIB = 8.0

# The autoscaler's own state beside the ladder rungs (daemon/autoscaler/states.py imports it). A
# level of this name could not be told apart from the state in `level pin`, status or history, and
# the machine refuses a ladder holding it, so the loader refuses the level.
FALLBACK_STATE = "fallback"


# ---------------------------------------------------------------------------- schema metadata
# kind: int | float | duration | str | bool | strlist | size | section (nested dataclass)


def _f(
    kind: str,
    default: Any = dataclasses.MISSING,
    *,
    lo: float | None = None,
    positive: bool = False,
    optional: bool = False,
    doc: str = "",
    hi: float | None = None,
) -> Any:
    meta = {"kind": kind, "lo": lo, "positive": positive, "optional": optional, "doc": doc,
            "hi": hi}  # fmt: skip
    if isinstance(default, list | dict):
        raise TypeError("mutable default")
    return field(default=default, metadata=meta)


def _sec(cls: type) -> dict[str, Any]:
    return {"kind": "section", "cls": cls}


@dataclass(frozen=True)
class CrashStorm:
    crashes: int = _f("int", 5, lo=1)
    window: float = _f("duration", 600.0, positive=True)


@dataclass(frozen=True)
class PressurePolicy:
    """When sustained pressure sheds a rung, and the promotion guard (docs/autoscaler.md)."""

    shed_after: float = _f("duration", 120.0, positive=True)
    memory_psi_full_pct: float = _f("float", 10.0, positive=True, hi=100.0)
    mem_available_min_pct: float = _f("float", 5.0, lo=0.0, hi=100.0)
    gpu_memory_max_pct: float = _f("float", 95.0, positive=True, hi=100.0)
    gpu_power_limit_pct: float = _f("float", 98.0, positive=True, hi=100.0)
    gpu_throttle: bool = _f("bool", True)
    pause_after: float = _f("duration", 600.0, positive=True)
    guard: bool = _f("bool", True)
    guard_reserve_pct: float = _f("float", 10.0, lo=0.0, hi=90.0)


@dataclass(frozen=True)
class AutoscalerPolicy:
    """What the autoscaler consumes; durations are float seconds."""

    ladder: tuple[str, ...] = _f("strlist", ("light", "medium"))
    fallback_level: str = _f("str", "light")
    promote_after: float = _f("duration", 3600.0, positive=True)
    max_reboots: int = _f("int", 3, lo=0)
    window: float = _f("duration", 3600.0, positive=True)
    crash_storm: CrashStorm = field(default_factory=CrashStorm, metadata=_sec(CrashStorm))
    cooldown: float = _f("duration", 7200.0, positive=True)
    cooldown_max: float = _f("duration", 57600.0, positive=True)
    stable_reset_after: float = _f("duration", 86400.0, positive=True)
    pinned: str | None = _f("str", None, optional=True)
    pressure: PressurePolicy = field(default_factory=PressurePolicy, metadata=_sec(PressurePolicy))


@dataclass(frozen=True)
class Checks:
    health: float = _f("duration", 15.0, positive=True)
    stability: float = _f("duration", 300.0, positive=True)
    telemetry: float = _f("duration", 30.0, positive=True)
    report: float = _f("duration", 1800.0, positive=True)


@dataclass(frozen=True)
class EvalSettings:
    """Evals the daemon runs itself (``python -m trainer.evaluate`` as its own process)."""

    every: float | None = _f("duration", None, positive=True, optional=True)
    episodes: int = _f("int", 10, lo=1)
    threads: int = _f("int", 1, lo=1)
    device: str = _f("str", "auto")
    idle_slot_only: bool = _f("bool", True)
    timeout: float = _f("duration", 3600.0, positive=True)


@dataclass(frozen=True)
class Reports:
    keep: int = _f("int", 48, lo=1)


@dataclass(frozen=True)
class Backoff:
    initial: float = _f("duration", 10.0, positive=True)
    factor: float = _f("float", 2.0, lo=1.0)
    max: float = _f("duration", 300.0, positive=True)
    reset_after: float = _f("duration", 600.0, positive=True)
    storm_crashes: int = _f("int", 5, lo=1)
    storm_window: float = _f("duration", 600.0, positive=True)
    # Restarts (crash or frozen heartbeat) in a row with no new episode: FATAL however far apart.
    max_no_progress_restarts: int = _f("int", 10, lo=1)


@dataclass(frozen=True)
class ControlSettings:
    socket_group: str | None = _f("str", None, optional=True)


METRICS_PORT = 9787  # not in Prometheus's registry of default ports when chosen


@dataclass(frozen=True)
class MetricsSettings:
    """The Prometheus endpoint (daemon/metrics.py); ``listen: null`` turns it off."""

    listen: str | None = _f("str", f"127.0.0.1:{METRICS_PORT}", optional=True)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9787`` for IPv6) -> (host, port); ValueError with one line."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host, int(port)


@dataclass(frozen=True)
class StoreSettings:
    """Where the durable state lives (daemon/store): null is ``<state-dir>/atari.db`` (SQLite);
    ``postgresql+psycopg://USER@HOST:PORT/DB`` a PostgreSQL database (docs/fleet.md)."""

    url: str | None = _f("str", None, optional=True)


@dataclass(frozen=True)
class FleetSettings:
    """Fleet mode (docs/fleet.md): boxes share one PostgreSQL store and one runs dir, and each
    claims games from the shared queue as leases it renews from the health check."""

    enabled: bool = _f("bool", False)
    lease: float = _f("duration", 60.0, positive=True)


# A box's name: what `atarictl --fleet status` shows and the per-box rows carry.
BOX_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"

STORE_URL_RE = r"^(sqlite:///.+|postgresql\+psycopg://[^/?#]*/[^/?#]+(\?.*)?)$"


@dataclass(frozen=True)
class GameLogs:
    max_bytes: int = _f("size", 10 * 1024 * 1024, lo=1024)
    backups: int = _f("int", 3, lo=0)


@dataclass(frozen=True)
class Paths:
    state_dir: str | None = _f("str", None, optional=True)
    logs_dir: str | None = _f("str", None, optional=True)
    runtime_dir: str | None = _f("str", None, optional=True)
    # The trainers' run dirs; null: <state-dir>/runs. In fleet mode, storage every box shares.
    runs_dir: str | None = _f("str", None, optional=True)
    boot_id_file: str = _f("str", "/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class Level:
    name: str = field(metadata={"kind": "name"})
    games: int = _f("int", lo=1)
    num_envs: int = _f("int", lo=1)
    batch_size: int = _f("int", lo=1)
    buffer_gb: float | None = _f("float", None, positive=True, optional=True)
    algo: str | None = _f("str", None, optional=True)
    trainer_args: tuple[str, ...] = _f("strlist", ())

    def memory_gib(self, algo: str) -> float:
        """RAM for this level's trainers: the learner's data (DQN's replay budget, the trainer's
        default when buffer_gb is unset; PQN's rollout), envs and the trainer's base."""
        data = contract.learner_memory_bytes(algo, self.num_envs, self.batch_size, self.buffer_gb)
        per_game = data / 1024**3 + self.num_envs * ENV_MIB / 1024
        return self.games * (per_game + TRAINER_BASE_GIB)


@dataclass(frozen=True)
class GameTarget:
    name: str
    target: int


@dataclass(frozen=True)
class Profile:
    path: str = field(metadata={"kind": "name"})
    games: tuple[GameTarget, ...] = field(metadata={"kind": "games"})
    levels: tuple[Level, ...] = field(metadata={"kind": "levels"})
    start_level: str = _f("str")
    autoscaler: AutoscalerPolicy = field(
        default_factory=AutoscalerPolicy, metadata=_sec(AutoscalerPolicy)
    )
    checks: Checks = field(default_factory=Checks, metadata=_sec(Checks))
    stop_grace: float = _f("duration", 60.0, positive=True)
    startsecs: float = _f("duration", 10.0, lo=0)
    backoff: Backoff = field(default_factory=Backoff, metadata=_sec(Backoff))
    frozen_after: float = _f("duration", 300.0, positive=True)
    telemetry_retention: float = _f("duration", 7 * 86400.0, positive=True)
    control: ControlSettings = field(
        default_factory=ControlSettings, metadata=_sec(ControlSettings)
    )
    metrics: MetricsSettings = field(
        default_factory=MetricsSettings, metadata=_sec(MetricsSettings)
    )
    gpu_cost_per_hour: float | None = _f("float", None, lo=0, optional=True)
    trainer_args: tuple[str, ...] = _f("strlist", ())
    algo: str = _f("str", "dqn")
    checkpoint_every: float = _f("duration", 90.0, positive=True)
    device: str = _f("str", "auto")
    seed: int = _f("int", 0, lo=0)
    game_logs: GameLogs = field(default_factory=GameLogs, metadata=_sec(GameLogs))
    paths: Paths = field(default_factory=Paths, metadata=_sec(Paths))
    eval: EvalSettings = field(default_factory=EvalSettings, metadata=_sec(EvalSettings))
    reports: Reports = field(default_factory=Reports, metadata=_sec(Reports))
    store: StoreSettings = field(default_factory=StoreSettings, metadata=_sec(StoreSettings))
    box: str | None = _f("str", None, optional=True)  # null: the host name
    fleet: FleetSettings = field(default_factory=FleetSettings, metadata=_sec(FleetSettings))

    def level_algo(self, level: Level) -> str:
        """The level's algo, else the profile's (the loader checks all levels agree)."""
        return level.algo or self.algo

    def level(self, name: str) -> Level:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(name)

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(lv.name for lv in self.levels)

    def target(self, game: str) -> int:
        for g in self.games:
            if g.name == game:
                return g.target
        raise KeyError(game)


def documented_fields() -> list[str]:
    """Every dotted field name an operator can write (for the docs check)."""
    out: list[str] = ["games", "levels", "levels.NAME"]

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            kind = f.metadata.get("kind")
            if kind in (None, "name"):
                continue
            dotted = f"{prefix}{f.name}"
            if kind in ("games", "levels"):
                continue
            out.append(dotted)
            if kind == "section":
                walk(f.metadata["cls"], dotted + ".")

    walk(Profile, "")
    walk(Level, "levels.NAME.")
    return out
