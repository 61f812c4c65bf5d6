"""The generic YAML walker: a composed node tree -> schema dataclasses, with ``FILE:LINE`` errors.

The YAML is composed into nodes (not loaded straight to dicts) so every error can name the line of
the offending node. The walker knows nothing about particular fields: it reads each dataclass
field's metadata (see ``schema``) for the value's kind and range, finds unknown keys (with a
did-you-mean), duplicate keys and missing required keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterator
from typing import Any

import yaml

from daemon.config.errors import ProfileError

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


# Every number in a profile must be finite and small enough to become a float, a timer deadline or
# a timedelta: NaN compares False against every bound, so range checks alone let it through, and
# inf or a 400-digit integer crash whatever first does arithmetic on it, long after the load.
MAX_NUMBER = 2**53  # the largest integer a float holds exactly
MAX_DURATION_S = 3650 * 86400.0  # ten years: past any sensible interval, well inside timedelta


def _seconds(value: object) -> float | int:
    """The number a duration value stands for, not yet checked for finiteness or range."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _DUR_UNITS[m.group(2)]
    if isinstance(value, str) and value.strip().startswith("-"):
        return -1.0  # reported as "must be positive" by the caller
    raise ValueError("not a duration")


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``1.5``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``; ValueError if not
    (also for NaN, infinity and anything past ``MAX_DURATION_S``)."""
    seconds = _seconds(value)
    if not (isinstance(seconds, int) or math.isfinite(seconds)) or abs(seconds) > MAX_DURATION_S:
        raise ValueError("not a finite duration")
    return float(seconds)


class Ctx:
    def __init__(self, file: str) -> None:
        self.file = file

    def err(self, node: yaml.Node | None, name: str, problem: str, fix: str) -> ProfileError:
        line = node.start_mark.line + 1 if node is not None else None
        return ProfileError(self.file, line, name, problem, fix)


def scalar(ctx: Ctx, node: yaml.Node, name: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.err(
            node,
            name,
            "expected a single value, got a "
            + ("mapping" if isinstance(node, yaml.MappingNode) else "list"),
            "write one value on the line",
        )
    try:
        return yaml.safe_load(yaml.serialize(node))
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:  # e.g. !!python/object
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise ctx.err(
            node,
            name,
            f"cannot read the value {_shown(node)} ({problem})",
            "write a plain number, string, true/false or null",
        ) from None


def mapping_items(
    ctx: Ctx, node: yaml.Node, name: str
) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.err(
            node, name or "profile", "expected a mapping of key: value", "indent the keys under it"
        )
    seen: set[str] = set()
    for knode, vnode in node.value:
        if not isinstance(knode, yaml.ScalarNode):
            raise ctx.err(
                knode, name or "profile", "a key must be a plain name", "write key: value"
            )
        key = str(knode.value)
        full = f"{name}.{key}" if name else key
        if key in seen:
            raise ctx.err(knode, full, "duplicate key", "keep only one of them")
        seen.add(key)
        yield key, knode, vnode


def _convert(ctx: Ctx, f: dataclasses.Field[Any], node: yaml.Node, name: str) -> Any:
    meta = f.metadata
    kind = meta["kind"]
    if kind == "section":
        return section_from(ctx, meta["cls"], node, name)
    if kind == "strlist":
        if not isinstance(node, yaml.SequenceNode):
            raise ctx.err(
                node, name, "expected a list", "write it as [a, b] or one '- item' a line"
            )
        out = []
        for i, item in enumerate(node.value):
            v = scalar(ctx, item, f"{name}[{i}]")
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                raise ctx.err(item, f"{name}[{i}]", f"expected a string, got {v!r}", "quote it")
            out.append(str(v))
        return tuple(out)
    value = scalar(ctx, node, name)
    bounds = {"lo": meta["lo"], "positive": meta["positive"], "hi": meta.get("hi")}
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
        return check_number(ctx, node, name, value, MAX_NUMBER, **bounds)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ctx.err(
                node, name, f"expected a number, got {value!r}", "write a number like 2.5"
            )
        return float(check_number(ctx, node, name, value, MAX_NUMBER, **bounds))
    if kind == "duration":
        try:
            seconds = _seconds(value)
        except ValueError:
            raise ctx.err(
                node,
                name,
                f"expected a duration, got {value!r}",
                'write seconds (90) or a string like "90s", "15m", "2h"',
            ) from None
        return float(check_number(ctx, node, name, seconds, MAX_DURATION_S, **bounds))
    if kind == "size":
        size: float | int
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str) and (m := _SIZE.match(value)):
            size = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower() or None]
        else:
            raise ctx.err(
                node,
                name,
                f"expected a size, got {value!r}",
                'write bytes (1048576) or a string like "10MB"',
            )
        return int(check_number(ctx, node, name, size, MAX_NUMBER, **bounds))
    raise AssertionError(kind)


def _shown(node: yaml.Node) -> str:
    """The value as the operator wrote it, cut short: a 400-digit number fits on the line."""
    text = str(node.value)
    return text if len(text) <= 24 else text[:21] + "..."


def check_number(
    ctx: Ctx,
    node: yaml.Node,
    name: str,
    v: float | int,
    cap: float = MAX_NUMBER,
    *,
    lo: float | None = None,
    positive: bool = False,
    hi: float | None = None,
) -> float | int:
    """The one range check every number goes through: finite first, then the cap, then the
    field's own bounds (``positive``, ``lo``, from its schema metadata)."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ctx.err(
            node, name, f"must be a finite number, got {_shown(node)}", "write a plain number"
        )
    if abs(v) > cap:
        raise ctx.err(
            node, name, f"must be at most {cap:g}, got {_shown(node)}", f"use a value <= {cap:g}"
        )
    if positive and v <= 0:
        raise ctx.err(node, name, f"must be positive, got {v:g}", "use a value > 0")
    if lo is not None and v < lo:
        raise ctx.err(node, name, f"must be >= {lo:g}, got {v:g}", f"use a value >= {lo:g}")
    if hi is not None and v > hi:
        raise ctx.err(node, name, f"must be <= {hi:g}, got {v:g}", f"use a value <= {hi:g}")
    return v


def _unknown(ctx: Ctx, knode: yaml.Node, full: str, key: str, valid: list[str]) -> ProfileError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    return ctx.err(knode, full, "unknown key", hint)


def section_from(
    ctx: Ctx, cls: type, node: yaml.Node | None, name: str, extra: dict[str, Any] | None = None
) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("kind") != "name"}
    kwargs: dict[str, Any] = dict(extra or {})
    if node is not None and not (isinstance(node, yaml.ScalarNode) and node.value == ""):
        for key, knode, vnode in mapping_items(ctx, node, name):
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


def node_of(root: yaml.Node, *keys: str) -> yaml.Node | None:
    node: yaml.Node | None = root
    for k in keys:
        if not isinstance(node, yaml.MappingNode):
            return node
        found = [v for kn, v in node.value if kn.value == k]
        if not found:
            return node
        node = found[0]
    return node
