"""Host pressure signals for telemetry and the autoscaler's shed edge (stdlib only, no psutil).

What the kernel says before a box falls over:

- PSI (``some``/``full`` avg10/avg60 for memory, io and cpu): from the daemon's own cgroup v2
  directory when it runs under systemd (the unit's limit is what it will hit first), else the
  host's ``/proc/pressure/*``. A kernel without PSI (older than 4.20, or ``psi=0``) gives a
  sample without ``psi``, never an error.
- MemAvailable and MemTotal (``/proc/meminfo``); under a cgroup memory limit (``memory.max`` on
  v2, ``memory.limit_in_bytes`` on a v1 memory controller) the headroom below that limit, so
  ``MemoryMax=`` counts like a smaller box. The cgroup's usage is its working set (usage less
  inactive page cache, ``memory.stat``).
- swap in/out rates (``/proc/vmstat`` pswpin/pswpout, pages/s between two samples) and the
  OOM-kill count (the cgroup's ``memory.events`` ``oom_kill``, else the kernel's ``/proc/vmstat``).

Every path hangs off ``proc_root`` and ``cgroup_root`` so the edge cases are tested on fixture
trees, and the real files of this machine are read in the tests too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESOURCES = ("memory", "io", "cpu")
# A v1 limit this large means "no limit" (the kernel's PAGE_COUNTER_MAX rounded to pages).
_NO_LIMIT = 2**60


def parse_psi(text: str) -> dict[str, dict[str, float]] | None:
    """``{"some": {"avg10", "avg60"}, "full": {...}}`` from a PSI file; None when nothing in it
    parses (an empty or foreign file). ``cpu.pressure`` has no ``full`` line on kernels before
    5.13: then only ``some``."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind not in ("some", "full"):
            continue
        vals: dict[str, float] = {}
        for item in rest.split():
            key, _, value = item.partition("=")
            if key in ("avg10", "avg60"):
                try:
                    vals[key] = float(value)
                except ValueError:
                    continue
        if "avg10" in vals and "avg60" in vals:
            out[kind] = vals
    return out or None


def own_cgroup(proc_root: Path) -> str | None:
    """The daemon's cgroup v2 path (the ``0::`` line of ``/proc/self/cgroup``), or None."""
    try:
        text = (proc_root / "self" / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def _v1_memory_cgroup(proc_root: Path) -> str | None:
    try:
        text = (proc_root / "self" / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and "memory" in parts[1].split(","):
            return parts[2].strip()
    return None


def cgroup_dir(proc_root: Path, cgroup_root: Path) -> Path | None:
    """The directory of the daemon's v2 cgroup: ``<root>/<path>`` on a unified host,
    ``<root>/unified/<path>`` on a hybrid one; None when neither has PSI files."""
    path = own_cgroup(proc_root)
    if path is None:
        return None
    rel = path.lstrip("/")
    for base in (cgroup_root, cgroup_root / "unified"):
        d = base / rel if rel else base
        if (d / "memory.pressure").is_file() or (d / "cgroup.procs").is_file():
            return d
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _keyed(text: str | None) -> dict[str, int]:
    """``key value`` lines (meminfo drops its ``kB``)."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def _int_file(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None  # "max" (no v2 limit) or garbage


@dataclass
class PressureProbe:
    """One sample per telemetry tick; swap rates need the previous counters, so it keeps them.
    ``under_systemd`` (``INVOCATION_ID`` is set for every unit) picks the cgroup's PSI."""

    proc_root: Path = Path("/proc")
    cgroup_root: Path = Path("/sys/fs/cgroup")
    under_systemd: bool = field(default_factory=lambda: bool(os.environ.get("INVOCATION_ID")))
    _last: tuple[float, int, int] | None = None

    def psi_dir(self) -> tuple[Path, str]:
        if self.under_systemd:
            d = cgroup_dir(self.proc_root, self.cgroup_root)
            if d is not None and (d / "memory.pressure").is_file():
                return d, "cgroup"
        return self.proc_root / "pressure", "host"

    def sample(self, monotonic: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        d, scope = self.psi_dir()
        psi = {}
        for res in RESOURCES:
            name = f"{res}.pressure" if scope == "cgroup" else res
            text = _read(d / name)
            parsed = parse_psi(text) if text is not None else None
            if parsed is not None:
                psi[res] = parsed
        if psi:
            out["psi"] = psi
            out["psi_source"] = f"{scope}:{d}"
        meminfo = _keyed(_read(self.proc_root / "meminfo"))
        if "MemAvailable" in meminfo and "MemTotal" in meminfo:
            out["mem_available_mb"] = meminfo["MemAvailable"] / 1024
            out["mem_total_mb"] = meminfo["MemTotal"] / 1024
        out.update(self._cgroup_memory())
        vmstat = _keyed(_read(self.proc_root / "vmstat"))
        if "pswpin" in vmstat and "pswpout" in vmstat:
            now = (monotonic, vmstat["pswpin"], vmstat["pswpout"])
            if self._last is not None and monotonic > self._last[0]:
                dt = monotonic - self._last[0]
                out["swap_in_per_s"] = max(0, now[1] - self._last[1]) / dt
                out["swap_out_per_s"] = max(0, now[2] - self._last[2]) / dt
            self._last = now
        if "oom_kill" not in out and "oom_kill" in vmstat:
            out["oom_kill"] = vmstat["oom_kill"]
            out["oom_kill_source"] = "host"
        return out

    def _cgroup_memory(self) -> dict[str, Any]:
        """The cgroup's memory limit, usage and OOM kills: v2 files first, then a v1 memory
        controller (hybrid hosts, where systemd's MemoryMax= lands in memory.limit_in_bytes)."""
        out: dict[str, Any] = {}
        limit = current = None
        d = cgroup_dir(self.proc_root, self.cgroup_root)
        if d is not None:
            limit, current = _int_file(d / "memory.max"), _int_file(d / "memory.current")
            current = _working_set(current, _keyed(_read(d / "memory.stat")), "inactive_file")
            events = _keyed(_read(d / "memory.events"))
            if "oom_kill" in events:
                out["oom_kill"] = events["oom_kill"]
                out["oom_kill_source"] = "cgroup"
        v1 = _v1_memory_cgroup(self.proc_root)
        if limit is None and v1 is not None:
            v1d = self.cgroup_root / "memory" / v1.lstrip("/")
            limit = _int_file(v1d / "memory.limit_in_bytes")
            current = _working_set(_int_file(v1d / "memory.usage_in_bytes"),
                                   _keyed(_read(v1d / "memory.stat")), "total_inactive_file")
            oom = _keyed(_read(v1d / "memory.oom_control"))
            if "oom_kill" in oom and "oom_kill" not in out:
                out["oom_kill"] = oom["oom_kill"]
                out["oom_kill_source"] = "cgroup"
        if limit is not None and current is not None and limit < _NO_LIMIT:
            out["cgroup_mem_limit_mb"] = limit / 2**20
            out["cgroup_mem_current_mb"] = current / 2**20
        return out


def _working_set(current: int | None, stat: dict[str, int], inactive: str) -> int | None:
    """Usage less the inactive page cache (what the kernel drops first, never an OOM): the
    "working set" container tools report, so logs and read libraries do not look like pressure."""
    if current is None:
        return None
    return max(0, current - stat.get(inactive, 0))


def memory_headroom(sample: dict[str, Any] | None) -> tuple[float, float] | None:
    """(available MiB, total MiB) as the autoscaler sees it: the tighter of the host and the
    cgroup limit. None when the sample has neither."""
    if not sample:
        return None
    cands = []
    if isinstance(sample.get("mem_available_mb"), int | float) and sample.get("mem_total_mb"):
        cands.append((float(sample["mem_available_mb"]), float(sample["mem_total_mb"])))
    limit, cur = sample.get("cgroup_mem_limit_mb"), sample.get("cgroup_mem_current_mb")
    if isinstance(limit, int | float) and isinstance(cur, int | float) and limit > 0:
        cands.append((max(0.0, float(limit) - float(cur)), float(limit)))
    if not cands:
        return None
    return min(cands, key=lambda c: c[0] / c[1])


def psi_value(sample: dict[str, Any] | None, resource: str, kind: str, avg: str) -> float | None:
    try:
        return float(sample["psi"][resource][kind][avg])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None
