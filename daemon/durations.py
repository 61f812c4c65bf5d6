"""Compact durations for people: ``atarictl``'s tables and the periodic report print ETAs,
uptimes and spans the same way (``12m30s``, ``3h05m``, ``~2d`` for a rough estimate).

Standard library only: atarictl (client) and daemon/reporting (server side) both import it.
"""

from __future__ import annotations

import math


def duration(seconds: float | None) -> str:
    """`45s`, `12m30s`, `3h05m`, `2d04h`; `-` for unknown."""
    if seconds is None or (isinstance(seconds, float) and not math.isfinite(seconds)):
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def rough(seconds: float | None) -> str:
    """An estimate that stands on few episodes, in its largest unit: `~40s`, `~12m`, `~2d`."""
    if seconds is None or (isinstance(seconds, float) and not math.isfinite(seconds)):
        return "-"
    s = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"~{round(s / size)}{unit}"
    return f"~{round(s)}s"


def eta_text(seconds: float | None, is_rough: bool | None) -> str:
    return rough(seconds) if is_rough else duration(seconds)
