"""``load_profile``: read the file, walk it into the schema, then the checks across fields."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from daemon.config.errors import ProfileError
from daemon.config.games import envpool_task, unknown_game_hint
from daemon.config.schema import (
    BOX_RE,
    FALLBACK_STATE,
    METRICS_PORT,
    STORE_URL_RE,
    TRAINER_BASE_GIB,
    GameTarget,
    Level,
    Profile,
    parse_listen,
)
from daemon.config.yaml_walk import (
    Ctx,
    check_number,
    mapping_items,
    node_of,
    scalar,
    section_from,
)
from trainer.contract import ALGOS

# Level names appear in `atarictl level pin NAME`, in status lines and in dotted field names.
LEVEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _games(ctx: Ctx, node: yaml.Node) -> tuple[GameTarget, ...]:
    out = []
    tasks: dict[str, str] = {}
    for key, knode, vnode in mapping_items(ctx, node, "games"):
        full = f"games.{key}"
        try:
            task = envpool_task(key)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            raise ctx.err(knode, full, str(e), "install envpool into this Python") from None
        if task is None:
            raise ctx.err(knode, full, "unknown game (not in envpool)", unknown_game_hint(key))
        if task in tasks:
            raise ctx.err(
                knode,
                full,
                f"the same envpool game as games.{tasks[task]}",
                "keep only one of them",
            )
        tasks[task] = key
        value = scalar(ctx, vnode, full)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.err(
                vnode,
                full,
                f"expected a whole number of episodes, got {value!r}",
                "write the target episode count like 3000",
            )
        check_number(ctx, vnode, full, value, lo=1)
        out.append(GameTarget(key, value))
    if not out:
        raise ctx.err(node, "games", "no games", "list at least one game with its target")
    return tuple(out)


def _levels(ctx: Ctx, node: yaml.Node) -> tuple[tuple[Level, ...], dict[str, yaml.Node]]:
    out, nodes = [], {}
    for key, knode, vnode in mapping_items(ctx, node, "levels"):
        if key == FALLBACK_STATE:
            raise ctx.err(
                knode,
                f"levels.{key}",
                f"'{key}' is the autoscaler's own state, not a level",
                "rename that level (autoscaler.fallback_level says which level the state runs)",
            )
        if not LEVEL_NAME.match(key):
            raise ctx.err(
                knode,
                f"levels.{key}",
                "a level name is 1-64 letters, digits, '_' or '-', starting with a letter or digit",
                "rename that level",
            )
        out.append(section_from(ctx, Level, vnode, f"levels.{key}", extra={"name": key}))
        nodes[key] = knode
    if not out:
        raise ctx.err(node, "levels", "no levels", "define at least one level")
    return tuple(out), nodes


def _compose(path: Path) -> yaml.Node | None:
    """The file's YAML node tree; every way reading or parsing can fail is one ProfileError."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProfileError(
            str(path),
            None,
            "profile",
            f"cannot read ({e.strerror or e})",
            "check the path and its permissions",
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ProfileError(
            str(path),
            line,
            "profile",
            f"not UTF-8 text (byte {data[e.start]:#04x})",
            "save it as UTF-8",
        ) from None
    try:
        return yaml.compose(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        problem = e.problem or e.context or "syntax error"
        raise ProfileError(
            str(path),
            line,
            "profile",
            f"not valid YAML ({problem})",
            "fix the YAML syntax at that line",
        ) from None
    except yaml.YAMLError as e:  # a ReaderError (a control character) has a position, no mark
        position = getattr(e, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
        reason = getattr(e, "reason", None) or type(e).__name__
        raise ProfileError(
            str(path), line, "profile", f"not valid YAML ({reason})", "remove that character"
        ) from None
    except RecursionError:
        raise ProfileError(
            str(path), None, "profile", "not valid YAML (nested too deeply)", "flatten the nesting"
        ) from None


def load_profile(path: Path | str, *, host_memory_bytes: int | None = None) -> Profile:
    """Load and validate a profile; raises ``ProfileError`` (one line) on any problem.

    ``host_memory_bytes`` defaults to this host's total RAM; a level whose estimated memory
    exceeds it is refused. Pass a larger value to validate a profile meant for another machine.
    """
    path = Path(path)
    ctx = Ctx(str(path))
    root = _compose(path)
    if root is None:
        raise ProfileError(str(path), 1, "profile", "empty file", "copy profiles/cpu-tiny.yaml")
    games_node = levels_node = None
    rest: list[tuple[yaml.Node, yaml.Node]] = []
    for key, knode, vnode in mapping_items(ctx, root, ""):
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
    profile = section_from(
        ctx, Profile, sub, "", extra={"path": str(path), "games": games, "levels": levels}
    )
    _cross_check(ctx, profile, root, level_nodes, host_memory_bytes)
    return profile


def _cross_check(
    ctx: Ctx,
    p: Profile,
    root: yaml.Node,
    level_nodes: dict[str, yaml.Node],
    host_memory_bytes: int | None,
) -> None:
    names = p.level_names

    def need_level(value: str | None, *keys: str) -> None:
        if value is not None and value not in names:
            raise ctx.err(
                node_of(root, *keys),
                ".".join(keys),
                f"'{value}' is not a level",
                f"use one of: {', '.join(names)}",
            )

    need_level(p.start_level, "start_level")
    a = p.autoscaler
    if not a.ladder:
        raise ctx.err(
            node_of(root, "autoscaler", "ladder"),
            "autoscaler.ladder",
            "empty ladder",
            "list at least one level, e.g. [light, medium]",
        )
    for lv in a.ladder:
        need_level(lv, "autoscaler", "ladder")
    repeated = sorted({lv for lv in a.ladder if a.ladder.count(lv) > 1})
    if repeated:
        raise ctx.err(
            node_of(root, "autoscaler", "ladder"),
            "autoscaler.ladder",
            f"repeats {', '.join(repeated)}",
            "list each level once, lowest first",
        )
    need_level(a.fallback_level, "autoscaler", "fallback_level")
    states = (*a.ladder, FALLBACK_STATE)  # what the machine can be pinned to
    if a.pinned is not None and a.pinned not in states:
        raise ctx.err(
            node_of(root, "autoscaler", "pinned"),
            "autoscaler.pinned",
            f"'{a.pinned}' is not on autoscaler.ladder [{', '.join(a.ladder)}]",
            f"pin one of: {', '.join(states)}",
        )
    if a.cooldown_max < a.cooldown:
        raise ctx.err(
            node_of(root, "autoscaler", "cooldown_max"),
            "autoscaler.cooldown_max",
            f"shorter than cooldown ({a.cooldown_max:g}s < {a.cooldown:g}s)",
            "make cooldown_max >= cooldown",
        )
    if p.backoff.max < p.backoff.initial:
        raise ctx.err(
            node_of(root, "backoff", "max"),
            "backoff.max",
            "shorter than backoff.initial",
            "make max >= initial",
        )
    if host_memory_bytes is None:
        import psutil

        host_memory_bytes = int(psutil.virtual_memory().total)
    _check_algos(ctx, p, root)
    if p.eval.device not in ("auto", "cpu", "cuda"):
        raise ctx.err(node_of(root, "eval", "device"), "eval.device",
                      f"unknown device {p.eval.device!r}", "use auto, cpu or cuda")  # fmt: skip
    if p.metrics.listen is not None:
        try:
            parse_listen(p.metrics.listen)
        except ValueError as e:
            fix = f"use HOST:PORT, e.g. 127.0.0.1:{METRICS_PORT}, or null"
            raise ctx.err(node_of(root, "metrics", "listen"), "metrics.listen", str(e),
                          fix) from None  # fmt: skip
    if p.store.url is not None and not re.match(STORE_URL_RE, p.store.url):
        raise ctx.err(node_of(root, "store", "url"), "store.url",
                      f"{p.store.url!r} is not a store URL",
                      "use null (the state dir's SQLite file), sqlite:///PATH or "
                      "postgresql+psycopg://USER@HOST:PORT/DATABASE")  # fmt: skip
    _check_fleet(ctx, p, root)
    host_gib = host_memory_bytes / 1024**3
    algos = {p.level_algo(lv) for lv in p.levels}
    for lv in p.levels:
        algo = max(sorted(algos), key=lv.memory_gib)
        need = lv.memory_gib(algo)
        data = "rollout" if algo == "pqn" else "buffer_gb"
        if need > host_gib:
            raise ctx.err(
                level_nodes[lv.name],
                f"levels.{lv.name}",
                f"needs about {need:.1f} GiB RAM ({lv.games} games x ({algo} {data} + "
                f"{lv.num_envs} envs + {TRAINER_BASE_GIB:g} GiB base)) but the host has "
                f"{host_gib:.1f} GiB",
                "lower games, num_envs or buffer_gb",
            )


def _check_fleet(ctx: Ctx, p: Profile, root: yaml.Node) -> None:
    if p.box is not None and not re.match(BOX_RE, p.box):
        raise ctx.err(node_of(root, "box"), "box", f"{p.box!r} is not a box name",
                      "use letters, digits, '.', '_' or '-' (at most 63), or null for the "
                      "host name")  # fmt: skip
    if not p.fleet.enabled:
        return
    if p.store.url is None or not p.store.url.startswith("postgresql"):
        raise ctx.err(node_of(root, "fleet", "enabled"), "fleet.enabled",
                      "fleet mode needs a store every box shares",
                      "set store.url to postgresql+psycopg://USER@HOST:PORT/DATABASE")  # fmt: skip
    if p.paths.runs_dir is None:
        raise ctx.err(node_of(root, "fleet", "enabled"), "fleet.enabled",
                      "fleet mode needs run dirs every box shares",
                      "set paths.runs_dir to a directory every box mounts (e.g. NFS)")  # fmt: skip
    # Renewals ride on the health check: a lease must outlast a couple of missed checks, or a
    # box that is merely slow loses its games.
    if p.fleet.lease < 3 * p.checks.health:
        raise ctx.err(node_of(root, "fleet", "lease"), "fleet.lease",
                      f"{p.fleet.lease:g}s is under 3 x checks.health ({p.checks.health:g}s)",
                      f"set fleet.lease to at least {3 * p.checks.health:g}s, or check health "
                      "more often")  # fmt: skip


def _check_algos(ctx: Ctx, p: Profile, root: yaml.Node) -> None:
    """Each algo is one of the trainer's. Levels may differ: a level's algo is what a game's run
    starts with there; a run keeps its algo across level changes (its checkpoints are that
    algo's), so the memory estimate of every level counts the hungriest algo of the profile."""
    if p.algo not in ALGOS:
        raise ctx.err(node_of(root, "algo"), "algo", f"unknown algo {p.algo!r}",
                      f"use one of: {', '.join(ALGOS)}")  # fmt: skip
    for lv in p.levels:
        if lv.algo is None:
            continue
        where = node_of(root, "levels", lv.name, "algo")
        if lv.algo not in ALGOS:
            raise ctx.err(where, f"levels.{lv.name}.algo", f"unknown algo {lv.algo!r}",
                          f"use one of: {', '.join(ALGOS)}")  # fmt: skip
