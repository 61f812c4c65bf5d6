"""``load_profile``: read the file, walk it into the schema, then the checks across fields."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from daemon.config.errors import ProfileError
from daemon.config.games import envpool_task, unknown_game_hint
from daemon.config.schema import TRAINER_BASE_GIB, GameTarget, Level, Profile
from daemon.config.yaml_walk import Ctx, mapping_items, node_of, scalar, section_from


def _games(ctx: Ctx, node: yaml.Node) -> tuple[GameTarget, ...]:
    out = []
    for key, knode, vnode in mapping_items(ctx, node, "games"):
        full = f"games.{key}"
        try:
            task = envpool_task(key)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            raise ctx.err(knode, full, str(e), "install envpool into this Python") from None
        if task is None:
            raise ctx.err(knode, full, "unknown game (not in envpool)", unknown_game_hint(key))
        value = scalar(ctx, vnode, full)
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


def _levels(ctx: Ctx, node: yaml.Node) -> tuple[tuple[Level, ...], dict[str, yaml.Node]]:
    out, nodes = [], {}
    for key, knode, vnode in mapping_items(ctx, node, "levels"):
        out.append(section_from(ctx, Level, vnode, f"levels.{key}", extra={"name": key}))
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
    ctx = Ctx(str(path))
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
    need_level(a.fallback_level, "autoscaler", "fallback_level")
    need_level(a.pinned, "autoscaler", "pinned")
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
