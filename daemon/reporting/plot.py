"""Learning curves: one panel per game (matplotlib, Agg backend, no display).

Each panel shows every episode's return (small grey points), the avg100 line, eval means as
diamonds with their std as error bars, the runs' levels as background bands (one colour per
level), level changes as dotted lines and reboots as red dashed lines, so a fallback's cost can
be read off the curve. Ten games lay out as 5 rows × 2 columns and stay readable.

Imported only by ``atarictl plot``/``report`` and the report program the daemon runs as a
subprocess: the daemon itself never loads matplotlib.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from daemon.reporting.data import History, avg100
from daemon.scores import human_normalized

LEVEL_COLOURS = ("#4c9be8", "#f5a524", "#7bc47f", "#c879c8", "#e8d44c", "#9aa0a6")
FORMATS = (".png", ".svg")


def _layout(n: int) -> tuple[int, int]:
    cols = 1 if n <= 2 else 2 if n <= 10 else 3
    return math.ceil(n / cols), cols


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def render(h: History, out: Path, *, dpi: int = 110) -> dict[str, Any]:
    """Draw ``h`` into ``out`` (.png or .svg); returns what was drawn (for --json)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    # A run of a few minutes asks the date locator for second ticks; its "defaulting" note is
    # noise on the operator's terminal, the plot is right.
    warnings.filterwarnings("ignore", message="AutoDateLocator was unable", category=UserWarning)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import NullFormatter

    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"{out}: the file name must end in .png or .svg")
    games = h.games or ["(no games)"]
    rows, cols = _layout(len(games))
    fig, axes = plt.subplots(rows, cols, figsize=(8.0 * cols, 2.9 * rows + 0.9), squeeze=False)
    levels = sorted({s.level for s in h.spans if s.level})
    colour = {lv: LEVEL_COLOURS[i % len(LEVEL_COLOURS)] for i, lv in enumerate(levels)}
    drawn: dict[str, Any] = {}
    now = time.time()
    for i, ax in enumerate(axes.flat):
        if i >= len(games):
            ax.set_visible(False)
            continue
        game = games[i]
        curve = h.curves.get(game)
        x = np.asarray(curve.t if curve else [], dtype=float) / 86400.0  # days since 1970
        y = np.asarray(curve.ret if curve else [], dtype=float)
        for s in (s for s in h.spans if s.game == game and s.level):
            end = s.end if s.end is not None else now
            ax.axvspan(s.start / 86400.0, end / 86400.0, color=colour[s.level], alpha=0.13, lw=0)
        for at, _a, _b in h.level_changes:
            ax.axvline(at / 86400.0, color="#333333", ls=":", lw=1.0)
        for at in h.reboots:
            ax.axvline(at / 86400.0, color="#d62728", ls="--", lw=1.3)
        if len(x):
            ax.plot(x, y, ".", ms=1.6, color="#8c8c8c", alpha=0.45, rasterized=True)
            ax.plot(x, avg100(curve.ret if curve else []), "-", color="#1f5fbf", lw=1.6)
        ev = [e for e in h.evals if e["game"] == game]
        if ev:
            ax.errorbar(
                [e["at"] / 86400.0 for e in ev],
                [e["mean"] for e in ev],
                yerr=[e["std"] or 0.0 for e in ev],
                fmt="D",
                ms=5,
                color="#e8590c",
                ecolor="#e8590c",
                capsize=2,
                lw=1,
                zorder=5,
            )
        last_avg = avg100(curve.ret)[-1] if curve and curve.ret else None
        head = f"{game} · {len(x):,} episodes · avg100 {_fmt(last_avg)}"
        if ev:
            hn = human_normalized(game, ev[-1]["mean"])
            head += f" · eval {_fmt(ev[-1]['mean'])}" + (
                "" if hn is None else f" ({hn:.0f}% human)"
            )
        ax.set_title(head, fontsize=10, loc="left")
        ax.grid(True, alpha=0.25)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=6))
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
        if not len(x) and not ev:
            ax.text(
                0.5,
                0.5,
                "no episodes yet",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="#888888",
            )
            # No ticks at all: the concise date formatter cannot format an empty tick list.
            ax.set_xticks([])
            ax.xaxis.set_major_formatter(NullFormatter())
        drawn[game] = {"episodes": len(x), "evals": len(ev), "avg100": last_avg}
    handles: list[Any] = [
        Line2D([], [], marker=".", ls="", color="#8c8c8c", label="episode return"),
        Line2D([], [], color="#1f5fbf", lw=1.6, label="avg100"),
        Line2D([], [], marker="D", ls="", color="#e8590c", label="eval mean ± std"),
        Line2D([], [], color="#d62728", ls="--", label="reboot"),
        Line2D([], [], color="#333333", ls=":", label="level change"),
        *(Patch(color=colour[lv], alpha=0.3, label=f"level {lv}") for lv in levels),
    ]
    # One column of panels is 8 in wide: the legend takes two rows there, not one clipped row.
    per_row = 4 if cols == 1 else 8
    legend_rows = math.ceil(len(handles) / per_row)
    fig.legend(
        handles=handles,
        loc="upper center",
        ncol=min(len(handles), per_row),
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(0.5, 1.0),
    )
    fig.supxlabel("time (UTC)", fontsize=9)
    fig.supylabel("return (unclipped)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.3 + 0.25 * legend_rows) / fig.get_figheight()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, dpi=dpi, format=out.suffix.lower().lstrip("."))
    plt.close(fig)
    tmp.replace(out)
    return {
        "path": str(out),
        "games": drawn,
        "reboots": len(h.reboots),
        "level_changes": len(h.level_changes),
    }
