"""SQLite schema (SQLAlchemy Core) and its in-code migration list.

``SCHEMA_VERSION`` is stored in ``schema_version``. A database from a newer version is refused; an
older one is migrated step by step by ``MIGRATIONS[v]`` (v -> v+1) inside one transaction. Each
migration is plain DDL: for a handful of additive changes this is clearer than Alembic.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

SCHEMA_VERSION = 6

metadata = MetaData()


class Outcome(StrEnum):
    """How a run ended (``runs.outcome``): written by the process manager, read by the
    autoscaler's crash-storm guard, so neither depends on the other's wording of ``reason``."""

    CRASH = "crash"  # died on its own: crash, failed start, config-error exit (FATAL or not)
    STOPPED = "stopped"  # the daemon or the operator stopped it (incl. SIGKILL after stop_grace)
    DONE = "done"  # reached its target
    UNKNOWN = "unknown"  # ended while the daemon was down (exit status lost)


# What the crash-storm guard counts.
CRASH_OUTCOMES = (Outcome.CRASH.value,)

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

boots = Table(
    "boots",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("boot_id", String, nullable=False),
    Column("detected_at", Float, nullable=False),
    Column("kernel_boot_time", Float),
    Column("previous_boot_id", String),
    Column("last_heartbeat_before", Float),
    Column("downtime_s", Float),
    Column("previous_clean_shutdown", Boolean),
    # The box that recorded the row (schema version 6, fleet mode: docs/fleet.md); each box's
    # autoscaler reads only its own boots, daemon runs, level, decisions, runs and telemetry.
    Column("box", String, index=True),
)

daemon_runs = Table(
    "daemon_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("boot_id", String),
    Column("started_at", Float, nullable=False),
    Column("last_heartbeat", Float),
    Column("stopped_at", Float),
    Column("clean_shutdown", Boolean, nullable=False, default=False),
    Column("box", String, index=True),
)

level_state = Table(
    "level_state",
    metadata,
    Column("id", Integer, primary_key=True),
    # One row per box (schema version 6; before it, a singleton row id=1).
    Column("box", String, unique=True),
    Column("state", String, nullable=False),
    Column("entered_at", Float, nullable=False),
    Column("pinned", String),
    Column("cooldown_s", Float),
    Column("failed_promotions", Integer, nullable=False, default=0),
    Column("stable_since", Float),
    Column("updated_at", Float),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", Float, nullable=False, index=True),
    Column("kind", String, nullable=False),  # level | process | boot | operator | daemon
    Column("game", String),
    Column("from_state", String),
    Column("to_state", String),
    Column("reason", Text),
    Column("box", String, index=True),
)

games = Table(
    "games",
    metadata,
    Column("name", String, primary_key=True),
    Column("state", String, nullable=False),
    Column("target", Integer, nullable=False),
    Column("episodes", Integer, nullable=False, default=0),
    # 64-bit on PostgreSQL (SQLite's INTEGER always is): a long Atari run passes 2**31 frames.
    Column("env_steps", BigInteger, nullable=False, default=0),
    Column("best_return", Float),
    Column("avg100", Float),
    Column("episodes_per_hour", Float),
    Column("last_checkpoint_time", Float),
    Column("pid", Integer),
    Column("updated_at", Float),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("game", String, nullable=False, index=True),
    Column("pid", Integer, nullable=False),
    # psutil create_time of the pid: tells a leftover trainer from an unrelated reused pid.
    Column("proc_start_time", Float),
    Column("level", String),
    Column("num_envs", Integer),
    Column("batch_size", Integer),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("exit_code", Integer),
    Column("signal", String),
    Column("reason", Text),
    Column("outcome", String),  # Outcome; added in schema version 3
    # CUDA_VISIBLE_DEVICES given to the trainer on a multi-GPU box (daemon/placement.py), else
    # NULL; added in schema version 5.
    Column("device", String),
    Column("box", String, index=True),
)

telemetry = Table(
    "telemetry",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", Float, nullable=False, index=True),
    Column("kind", String, nullable=False),  # gpu | host | process
    Column("payload", JSON, nullable=False),
    Column("box", String),
)

# A boot row that replaced a known earlier boot: a reboot. The first boot a database sees is not.
IS_REBOOT = boots.c.previous_boot_id.is_not(None)

# Added in schema version 2 (model registry for atarictl).
models = Table(
    "models",
    metadata,
    Column("game", String, primary_key=True),
    Column("kind", String, primary_key=True),  # best | latest
    Column("episode", Integer),
    Column("return_", Float),
    Column("at", Float),
    Column("path", Text),
)

# Added in schema version 4: one row per `atarictl eval` (or daemon-run eval).
evals = Table(
    "evals",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", Float, nullable=False, index=True),
    Column("game", String, nullable=False, index=True),
    Column("model_kind", String),  # best | latest | path
    Column("model_path", Text),
    Column("model_sha256", String),
    Column("model_episode", Integer),  # training episodes behind the weights
    Column("train_avg100", Float),
    Column("episodes", Integer, nullable=False),
    Column("mean", Float, nullable=False),
    Column("median", Float),
    Column("std", Float),
    Column("min", Float),
    Column("max", Float),
    Column("human_normalized", Float),  # null: no published reference for the game
    Column("seed", Integer),
    Column("wall_s", Float),
    Column("device", String),
    Column("source", String),  # atarictl | daemon
    Column("detail", JSON),  # protocol, per-episode scores and lengths, video
)

# Fleet mode's game queue (daemon/store/leases.py, docs/fleet.md): one row per game offered to
# the fleet; a box holds a game while ``expires_at`` lies ahead; ``token`` grows by one with every
# claim (the fencing token). A new table, so no version step: ``create_all`` makes it at open.
leases = Table(
    "leases",
    metadata,
    Column("game", String, primary_key=True),
    Column("work", Float, nullable=False, default=0.0),  # claim order: most work left first
    Column("box", String),  # the holder, or null: never claimed / released
    Column("token", BigInteger, nullable=False, default=0),
    Column("claimed_at", Float),
    Column("expires_at", Float, index=True),
)

# Fleet mode's operator commands (docs/fleet.md): `atarictl start/stop/restart GAME` for a game
# another box holds is a row here; the holder carries it out and records the result. A new
# table, made by ``create_all`` like ``leases``.
commands = Table(
    "commands",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", Float, nullable=False),
    Column("game", String, nullable=False, index=True),
    Column("verb", String, nullable=False),  # start | stop | restart
    Column("sent_by", String),  # the box (or atarictl's host) that wrote it
    Column("done_at", Float),
    Column("done_by", String),
    Column("result", Text),
)

# Tables whose rows belong to one box (schema version 6).
PER_BOX_TABLES = ("boots", "daemon_runs", "level_state", "decisions", "runs", "telemetry")

V1_TABLES = (
    "schema_version",
    "boots",
    "daemon_runs",
    "level_state",
    "decisions",
    "games",
    "runs",
    "telemetry",
)


def _v1_to_v2(conn: Connection) -> None:
    models.create(conn, checkfirst=True)


def _v2_to_v3(conn: Connection) -> None:
    """``runs.outcome``; older rows are classified from the reason wording of versions 1-2."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN outcome VARCHAR"))
    conn.execute(
        text(
            "UPDATE runs SET outcome = CASE"
            " WHEN reason LIKE 'crashed:%' OR reason LIKE 'failed start:%'"
            "   OR reason LIKE 'gave up:%' OR reason LIKE 'spawn failed:%' THEN 'crash'"
            " WHEN reason LIKE 'target reached%' THEN 'done'"
            " WHEN reason LIKE 'ended while the daemon was down%' THEN 'unknown'"
            " ELSE 'stopped' END"
            " WHERE ended_at IS NOT NULL"
        )
    )


def _v3_to_v4(conn: Connection) -> None:
    evals.create(conn, checkfirst=True)


def _v4_to_v5(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE runs ADD COLUMN device VARCHAR"))


def _v5_to_v6(conn: Connection) -> None:
    """A ``box`` column on the per-box tables; the rows so far are the opening box's
    (``adopt_rows``: a database before version 6 had one box)."""
    for table in PER_BOX_TABLES:
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN box VARCHAR"))
        if table != "level_state":
            conn.execute(text(f"CREATE INDEX ix_{table}_box ON {table} (box)"))
    conn.execute(text("CREATE UNIQUE INDEX ix_level_state_box ON level_state (box)"))


def adopt_rows(conn: Connection, box: str) -> None:
    """Rows written before version 6 belong to the box that opens the database first after
    the upgrade (one box wrote them all)."""
    for table in PER_BOX_TABLES:
        conn.execute(text(f"UPDATE {table} SET box = :box WHERE box IS NULL"), {"box": box})
    if conn.dialect.name == "postgresql":
        # The old singleton row was inserted as id=1: the serial must move past it before a
        # second box's row takes an id from it.
        conn.execute(text("SELECT setval(pg_get_serial_sequence('level_state', 'id'), "
                          "COALESCE(MAX(id), 0) + 1, false) FROM level_state"))  # fmt: skip


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5, 5: _v5_to_v6,
}  # fmt: skip
