"""Profile YAML -> frozen, validated dataclasses.

The YAML is composed into a node tree (not loaded straight to dicts) so that every error can name
``FILE:LINE`` of the offending node. The dataclasses below are the schema: each field's metadata
says how its YAML value is parsed, so unknown keys, wrong types and out-of-range values are found
by one generic walker, and ``docs/configuration.md`` is checked against the same field list.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PROFILE_DIR = Path(__file__).resolve().parent.parent / "profiles"
DEFAULT_PROFILE = DEFAULT_PROFILE_DIR / "cpu-tiny.yaml"

# Memory estimate per trainer beyond its replay buffer: torch + envpool + Python (measured on the
# CPU build with the Nature CNN: ~1.2 GiB); per envpool Atari env ~ a few MiB of emulator state and
# frame stack. Deliberately generous: the point is to refuse a level that cannot fit at all.
TRAINER_BASE_GIB = 1.5
ENV_MIB = 8.0
DEFAULT_BUFFER_GIB = 1.0


class ProfileError(ValueError):
    """A profile problem; ``str()`` is one line ``FILE:LINE: FIELD: problem; fix``."""

    def __init__(self, file: str, line: int | None, fieldname: str, problem: str, fix: str) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {fieldname}: {problem}; {fix}")
        self.file, self.line, self.field = file, line, fieldname


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
) -> Any:
    meta = {"kind": kind, "lo": lo, "positive": positive, "optional": optional, "doc": doc}
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
class AutoscalerPolicy:
    """What H3's autoscaler consumes; durations are float seconds."""

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


@dataclass(frozen=True)
class Checks:
    health: float = _f("duration", 15.0, positive=True)
    stability: float = _f("duration", 300.0, positive=True)
    telemetry: float = _f("duration", 30.0, positive=True)
    report: float = _f("duration", 1800.0, positive=True)


@dataclass(frozen=True)
class Backoff:
    initial: float = _f("duration", 10.0, positive=True)
    factor: float = _f("float", 2.0, lo=1.0)
    max: float = _f("duration", 300.0, positive=True)
    reset_after: float = _f("duration", 600.0, positive=True)
    storm_crashes: int = _f("int", 5, lo=1)
    storm_window: float = _f("duration", 600.0, positive=True)


@dataclass(frozen=True)
class ControlSettings:
    socket_group: str | None = _f("str", None, optional=True)


@dataclass(frozen=True)
class GameLogs:
    max_bytes: int = _f("size", 10 * 1024 * 1024, lo=1024)
    backups: int = _f("int", 3, lo=0)


@dataclass(frozen=True)
class Paths:
    state_dir: str | None = _f("str", None, optional=True)
    logs_dir: str | None = _f("str", None, optional=True)
    runtime_dir: str | None = _f("str", None, optional=True)
    boot_id_file: str = _f("str", "/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class Level:
    name: str = field(metadata={"kind": "name"})
    games: int = _f("int", lo=1)
    num_envs: int = _f("int", lo=1)
    batch_size: int = _f("int", lo=1)
    buffer_gb: float | None = _f("float", None, positive=True, optional=True)
    trainer_args: tuple[str, ...] = _f("strlist", ())

    def memory_gib(self) -> float:
        per_game = (self.buffer_gb or DEFAULT_BUFFER_GIB) + self.num_envs * ENV_MIB / 1024
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
    gpu_cost_per_hour: float | None = _f("float", None, lo=0, optional=True)
    trainer_args: tuple[str, ...] = _f("strlist", ())
    checkpoint_every: float = _f("duration", 90.0, positive=True)
    device: str = _f("str", "auto")
    seed: int = _f("int", 0, lo=0)
    game_logs: GameLogs = field(default_factory=GameLogs, metadata=_sec(GameLogs))
    paths: Paths = field(default_factory=Paths, metadata=_sec(Paths))

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


# ---------------------------------------------------------------------------- value parsing

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    None: 1,
}


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``1.5``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``; ValueError if not."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _DUR_UNITS[m.group(2)]
    if isinstance(value, str) and value.strip().startswith("-"):
        return -1.0  # reported as "must be positive" by the caller
    raise ValueError("not a duration")


class _Ctx:
    def __init__(self, file: str) -> None:
        self.file = file

    def err(self, node: yaml.Node | None, name: str, problem: str, fix: str) -> ProfileError:
        line = node.start_mark.line + 1 if node is not None else None
        return ProfileError(self.file, line, name, problem, fix)


def _scalar(ctx: _Ctx, node: yaml.Node, name: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.err(
            node,
            name,
            "expected a single value, got a "
            + ("mapping" if isinstance(node, yaml.MappingNode) else "list"),
            "write one value on the line",
        )
    return yaml.safe_load(yaml.serialize(node))


def _items(ctx: _Ctx, node: yaml.Node, name: str) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.err(
            node, name or "profile", "expected a mapping of key: value", "indent the keys under it"
        )
    seen: set[str] = set()
    for knode, vnode in node.value:
        key = str(knode.value)
        full = f"{name}.{key}" if name else key
        if key in seen:
            raise ctx.err(knode, full, "duplicate key", "keep only one of them")
        seen.add(key)
        yield key, knode, vnode


def _convert(ctx: _Ctx, f: dataclasses.Field[Any], node: yaml.Node, name: str) -> Any:
    meta = f.metadata
    kind = meta["kind"]
    if kind == "section":
        return _section_from(ctx, meta["cls"], node, name)
    if kind == "strlist":
        if not isinstance(node, yaml.SequenceNode):
            raise ctx.err(
                node, name, "expected a list", "write it as [a, b] or one '- item' a line"
            )
        out = []
        for i, item in enumerate(node.value):
            v = _scalar(ctx, item, f"{name}[{i}]")
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                raise ctx.err(item, f"{name}[{i}]", f"expected a string, got {v!r}", "quote it")
            out.append(str(v))
        return tuple(out)
    value = _scalar(ctx, node, name)
    if value is None:
        if meta["optional"]:
            return None
        raise ctx.err(node, name, "a value is required", "give a value or remove the key")
    if kind == "str":
        if not isinstance(value, str):
            raise ctx.err(node, name, f"expected a string, got {value!r}", "quote it")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ctx.err(node, name, f"expected true or false, got {value!r}", "write true/false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.err(
                node, name, f"expected a whole number, got {value!r}", "write an integer like 4"
            )
        return _range(ctx, meta, node, name, value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ctx.err(
                node, name, f"expected a number, got {value!r}", "write a number like 2.5"
            )
        return _range(ctx, meta, node, name, float(value))
    if kind == "duration":
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise ctx.err(
                node,
                name,
                f"expected a duration, got {value!r}",
                'write seconds (90) or a string like "90s", "15m", "2h"',
            ) from None
        return _range(ctx, meta, node, name, seconds)
    if kind == "size":
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str) and (m := _SIZE.match(value)):
            size = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower() or None])
        else:
            raise ctx.err(
                node,
                name,
                f"expected a size, got {value!r}",
                'write bytes (1048576) or a string like "10MB"',
            )
        return _range(ctx, meta, node, name, size)
    raise AssertionError(kind)


def _range(ctx: _Ctx, meta: Any, node: yaml.Node, name: str, v: float) -> Any:
    if meta["positive"] and v <= 0:
        raise ctx.err(node, name, f"must be positive, got {v:g}", "use a value > 0")
    if meta["lo"] is not None and v < meta["lo"]:
        raise ctx.err(
            node, name, f"must be >= {meta['lo']:g}, got {v:g}", f"use a value >= {meta['lo']:g}"
        )
    return v


def _unknown(ctx: _Ctx, knode: yaml.Node, full: str, key: str, valid: list[str]) -> ProfileError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    return ctx.err(knode, full, "unknown key", hint)


def _section_from(
    ctx: _Ctx, cls: type, node: yaml.Node | None, name: str, extra: dict[str, Any] | None = None
) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("kind") != "name"}
    kwargs: dict[str, Any] = dict(extra or {})
    if node is not None and not (isinstance(node, yaml.ScalarNode) and node.value == ""):
        for key, knode, vnode in _items(ctx, node, name):
            full = f"{name}.{key}" if name else key
            if key not in fields or fields[key].metadata.get("kind") in ("games", "levels"):
                raise _unknown(ctx, knode, full, key, sorted(fields))
            kwargs[key] = _convert(ctx, fields[key], vnode, full)
    for fname, f in fields.items():
        if (
            fname not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ctx.err(
                node,
                f"{name}.{fname}" if name else fname,
                "missing required key",
                f"add '{fname}:'",
            )
    return cls(**kwargs)


# ---------------------------------------------------------------------------- profile


@functools.cache
def envpool_task_ids() -> frozenset[str]:
    """envpool's task ids. Asked in a child process unless envpool is already loaded: importing
    envpool costs ~120 MB of RSS, which the long-lived daemon should not carry for a name list."""
    if "envpool" in sys.modules:
        return frozenset(sys.modules["envpool"].list_all_envs())
    code = "import envpool, json; print(json.dumps(envpool.list_all_envs()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"cannot list envpool's games ({last}); is envpool installed?")
    return frozenset(json.loads(out.stdout))


def envpool_task(game: str) -> str | None:
    """The envpool task id for a profile game name, or None if envpool has no such game."""
    ids = envpool_task_ids()
    if game in ids:
        return game
    if f"{game}-v5" in ids:
        return f"{game}-v5"
    return None


def _games(ctx: _Ctx, node: yaml.Node) -> tuple[GameTarget, ...]:
    out = []
    for key, knode, vnode in _items(ctx, node, "games"):
        full = f"games.{key}"
        try:
            task = envpool_task(key)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            raise ctx.err(knode, full, str(e), "install envpool into this Python") from None
        if task is None:
            names = sorted({t.removesuffix("-v5") for t in envpool_task_ids()})
            close = difflib.get_close_matches(key, names, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see envpool.list_all_envs()"
            raise ctx.err(knode, full, "unknown game (not in envpool)", hint)
        value = _scalar(ctx, vnode, full)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.err(
                vnode,
                full,
                f"expected a whole number of episodes, got {value!r}",
                "write the target episode count like 3000",
            )
        if value < 1:
            raise ctx.err(vnode, full, f"must be >= 1, got {value}", "use a target >= 1")
        out.append(GameTarget(key, value))
    if not out:
        raise ctx.err(node, "games", "no games", "list at least one game with its target")
    return tuple(out)


def _levels(ctx: _Ctx, node: yaml.Node) -> tuple[tuple[Level, ...], dict[str, yaml.Node]]:
    out, nodes = [], {}
    for key, knode, vnode in _items(ctx, node, "levels"):
        out.append(_section_from(ctx, Level, vnode, f"levels.{key}", extra={"name": key}))
        nodes[key] = knode
    if not out:
        raise ctx.err(node, "levels", "no levels", "define at least one level")
    return tuple(out), nodes


def load_profile(path: Path | str, *, host_memory_bytes: int | None = None) -> Profile:
    """Load and validate a profile; raises ``ProfileError`` (one line) on any problem.

    ``host_memory_bytes`` defaults to this host's total RAM; a level whose estimated memory
    exceeds it is refused. Pass a larger value to validate a profile meant for another machine.
    """
    path = Path(path)
    ctx = _Ctx(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ProfileError(
            str(path),
            None,
            "profile",
            f"cannot read ({e.strerror})",
            "check the path and its permissions",
        ) from None
    try:
        root = yaml.compose(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise ProfileError(
            str(path),
            line,
            "profile",
            f"not valid YAML ({e.problem})",
            "fix the YAML syntax at that line",
        ) from None
    if root is None:
        raise ProfileError(str(path), 1, "profile", "empty file", "copy profiles/cpu-tiny.yaml")
    games_node = levels_node = None
    rest: list[tuple[yaml.Node, yaml.Node]] = []
    for key, knode, vnode in _items(ctx, root, ""):
        if key == "games":
            games_node = vnode
        elif key == "levels":
            levels_node = vnode
        else:
            rest.append((knode, vnode))
    if games_node is None:
        raise ctx.err(root, "games", "missing required key", "add 'games:' with targets")
    if levels_node is None:
        raise ctx.err(root, "levels", "missing required key", "add 'levels:'")
    games = _games(ctx, games_node)
    levels, level_nodes = _levels(ctx, levels_node)
    sub = yaml.MappingNode("tag:yaml.org,2002:map", rest, root.start_mark, root.end_mark)
    profile = _section_from(
        ctx, Profile, sub, "", extra={"path": str(path), "games": games, "levels": levels}
    )
    _cross_check(ctx, profile, root, level_nodes, host_memory_bytes)
    return profile


def _node_of(root: yaml.Node, *keys: str) -> yaml.Node | None:
    node: yaml.Node | None = root
    for k in keys:
        if not isinstance(node, yaml.MappingNode):
            return node
        found = [v for kn, v in node.value if kn.value == k]
        if not found:
            return node
        node = found[0]
    return node


def _cross_check(
    ctx: _Ctx,
    p: Profile,
    root: yaml.Node,
    level_nodes: dict[str, yaml.Node],
    host_memory_bytes: int | None,
) -> None:
    names = p.level_names

    def need_level(value: str | None, *keys: str) -> None:
        if value is not None and value not in names:
            raise ctx.err(
                _node_of(root, *keys),
                ".".join(keys),
                f"'{value}' is not a level",
                f"use one of: {', '.join(names)}",
            )

    need_level(p.start_level, "start_level")
    a = p.autoscaler
    if not a.ladder:
        raise ctx.err(
            _node_of(root, "autoscaler", "ladder"),
            "autoscaler.ladder",
            "empty ladder",
            "list at least one level, e.g. [light, medium]",
        )
    for lv in a.ladder:
        need_level(lv, "autoscaler", "ladder")
    need_level(a.fallback_level, "autoscaler", "fallback_level")
    need_level(a.pinned, "autoscaler", "pinned")
    if a.cooldown_max < a.cooldown:
        raise ctx.err(
            _node_of(root, "autoscaler", "cooldown_max"),
            "autoscaler.cooldown_max",
            f"shorter than cooldown ({a.cooldown_max:g}s < {a.cooldown:g}s)",
            "make cooldown_max >= cooldown",
        )
    if p.backoff.max < p.backoff.initial:
        raise ctx.err(
            _node_of(root, "backoff", "max"),
            "backoff.max",
            "shorter than backoff.initial",
            "make max >= initial",
        )
    if host_memory_bytes is None:
        import psutil

        host_memory_bytes = int(psutil.virtual_memory().total)
    host_gib = host_memory_bytes / 1024**3
    for lv in p.levels:
        need = lv.memory_gib()
        if need > host_gib:
            raise ctx.err(
                level_nodes[lv.name],
                f"levels.{lv.name}",
                f"needs about {need:.1f} GiB RAM ({lv.games} games x (buffer_gb + "
                f"{lv.num_envs} envs + {TRAINER_BASE_GIB:g} GiB base)) but the host has "
                f"{host_gib:.1f} GiB",
                "lower games, num_envs or buffer_gb",
            )
