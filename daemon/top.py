"""One shape for ``atarictl top``: the latest telemetry samples, per trainer and for the host.

The telemetry job (``Supervisor._on_telemetry``, every ``checks.telemetry``) samples the host
(``host_sample``), each trainer and the daemon (``ProcessProbe``: CPU %, RSS) and the GPUs
(``GpuProbe``: util, memory, per-process memory) and stores each sample in SQLite. The live daemon
builds this view from the samples it holds; atarictl, when the daemon is down, from the newest
rows of the ``telemetry`` table (``daemon/atarictl/offline.py: offline_top``). Both go through
``build`` below, so the two agree. Standard library only: atarictl imports it.
"""

from __future__ import annotations

from typing import Any

DAEMON = "(daemon)"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def gpu_memory_by_pid(gpu: dict[str, Any] | None) -> dict[int, float]:
    """MiB of GPU memory per pid, summed over the GPUs (NVML's per-process accounting)."""
    out: dict[int, float] = {}
    for g in (gpu or {}).get("gpus") or []:
        for pid, mib in (g.get("processes") or {}).items():
            if str(pid).isdigit() and _num(mib) is not None:
                out[int(pid)] = out.get(int(pid), 0.0) + float(mib)
    return out


def build(
    *, source: str, now: float, sampled_at: float | None, host: dict[str, Any] | None,
    processes: dict[str, Any] | None, gpu: dict[str, Any] | None, games: dict[int, str],
    daemon_pid: int | None, states: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``games`` maps trainer pids to game names; ``states`` the games' states (live only).
    A pid in the process sample that is neither a trainer nor the daemon is left out."""
    gmem = gpu_memory_by_pid(gpu)
    rows = []
    for pid_s, p in (processes or {}).items():
        if not str(pid_s).isdigit() or not isinstance(p, dict):
            continue
        pid = int(pid_s)
        name = games.get(pid) or (DAEMON if pid == daemon_pid else None)
        if name is None:
            continue
        rows.append({
            "game": name, "pid": pid, "state": (states or {}).get(name),
            "cpu_pct": _num(p.get("cpu_pct")), "rss_mib": _num(p.get("rss_mb")),
            "gpu_mem_mib": gmem.get(pid),
        })  # fmt: skip
    # Trainers first, heaviest CPU first; the daemon last.
    rows.sort(key=lambda r: (r["game"] == DAEMON, -(r["cpu_pct"] or 0.0), r["game"]))
    h = host or {}
    gpus = None
    if isinstance(gpu, dict):
        gpus = [
            {"index": g.get("index", i), "name": g.get("name"), "util_pct": _num(g.get("util_pct")),
             "mem_used_mib": _num(g.get("mem_used_mb")),
             "mem_total_mib": _num(g.get("mem_total_mb"))}
            for i, g in enumerate(gpu.get("gpus") or [])
        ]  # fmt: skip
    return {
        "source": source,
        "now": now,
        "sampled_at": sampled_at,
        "host": {
            "load1": _num(h.get("load1")),
            "cpu_pct": _num(h.get("cpu_pct")),
            "mem_used_mib": _num(h.get("mem_used_mb")),
            "mem_total_mib": _num(h.get("mem_total_mb")),
        },
        # None: no GPU sample (the daemon was started without one, or none stored yet);
        # [] with a reason: NVML answered that there is no GPU.
        "gpus": gpus,
        "gpu_reason": None if not isinstance(gpu, dict) or gpu.get("gpu") == "ok"
        else gpu.get("reason") or "no GPU",
        "processes": rows,
    }
