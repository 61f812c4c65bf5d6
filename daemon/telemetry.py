"""Telemetry samples: GPU through NVML (pynvml from nvidia-ml-py) and the host through psutil.

Without a GPU or without the NVIDIA driver, NVML raises ``NVMLError`` (``LibraryNotFound`` here);
the sample then says ``"gpu": "no GPU"`` with the reason, and the daemon runs on as before.
The NVML module is a parameter so the degradation is unit-tested with a fake boundary, while the
real module is called in the tests too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import psutil
import structlog

log = structlog.get_logger("daemon.telemetry")


def _nvml() -> ModuleType:
    import pynvml

    return pynvml


class GpuProbe:
    """Keeps NVML initialised between samples; retries init after a failure (driver reload)."""

    def __init__(self, nvml: Any = None) -> None:
        self.nvml = nvml if nvml is not None else _nvml()
        self._ready = False
        self._reported: str | None = None

    def sample(self) -> dict[str, Any]:
        nv = self.nvml
        try:
            if not self._ready:
                nv.nvmlInit()
                self._ready = True
            gpus = []
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                util = self._optional(nv.nvmlDeviceGetUtilizationRates, h)
                procs = self._optional(nv.nvmlDeviceGetComputeRunningProcesses, h) or []
                temp = self._optional(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
                power_mw = self._optional(nv.nvmlDeviceGetPowerUsage, h)
                limit_mw = self._named("nvmlDeviceGetEnforcedPowerLimit", h)
                slowdown_c = self._named("nvmlDeviceGetTemperatureThreshold", h,
                                         getattr(nv, "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN", 1))
                reasons = self._named("nvmlDeviceGetCurrentClocksThrottleReasons", h)
                gpus.append({
                    "index": i,
                    "name": _text(nv.nvmlDeviceGetName(h)),
                    "util_pct": util.gpu if util is not None else None,
                    "mem_used_mb": mem.used / 2**20,
                    "mem_total_mb": mem.total / 2**20,
                    "temperature_c": temp,
                    "power_w": power_mw / 1000.0 if power_mw is not None else None,
                    "power_limit_w": limit_mw / 1000.0 if limit_mw is not None else None,
                    "temperature_slowdown_c": slowdown_c,
                    "throttle_reasons": throttle_names(reasons),
                    "processes": {str(p.pid): (p.usedGpuMemory or 0) / 2**20 for p in procs},
                })  # fmt: skip
        except nv.NVMLError as e:
            self._ready = False
            reason = f"{type(e).__name__}: {e}"
            if reason != self._reported:  # say it once, not every 30 s
                log.warning("no GPU telemetry; training runs on what the trainer finds",
                            reason=reason)  # fmt: skip
                self._reported = reason
            return {"gpu": "no GPU", "reason": reason}
        self._reported = None
        return {"gpu": "ok", "gpus": gpus}

    def _named(self, name: str, *args: Any) -> Any:
        """An optional reading an older driver binding may not have at all."""
        read = getattr(self.nvml, name, None)
        return None if read is None else self._optional(read, *args)

    def _optional(self, read: Any, *args: Any) -> Any:
        """One sensor reading, or None where this GPU has no such sensor (power and temperature
        on a MIG slice or some boards): a missing sensor is not a missing GPU."""
        try:
            return read(*args)
        except getattr(self.nvml, "NVMLError_NotSupported", ()):
            return None


# NVML's clock-event reason bits (nvml.h nvmlClocksThrottleReason*); idle, application and
# display settings are not pressure and are left out.
THROTTLE_BITS = {
    0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal", 0x40: "hw_thermal",
    0x80: "hw_power_brake",
}  # fmt: skip


def throttle_names(mask: int | None) -> list[str] | None:
    """The pressure-related throttle reasons set in NVML's bitmask; None when unknown."""
    if not isinstance(mask, int):
        return None
    return [name for bit, name in THROTTLE_BITS.items() if mask & bit]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _or_na(value: float | None, fmt: str) -> str:
    return "n/a " if value is None else fmt.format(value)


def gpu_summary(sample: dict[str, Any] | None) -> str:
    if not sample:
        return "unknown"
    if sample.get("gpu") != "ok":
        return "no GPU"
    parts = [
        f"{g['name']} {_or_na(g['util_pct'], '{}')}% "
        f"{g['mem_used_mb']:.0f}/{g['mem_total_mb']:.0f} MiB "
        f"{_or_na(g['temperature_c'], '{}')}C {_or_na(g['power_w'], '{:.0f}')}W"
        for g in sample["gpus"]
    ]
    return "; ".join(parts) or "no GPU"


class ProcessProbe:
    """CPU % and RSS of the daemon and its trainers (psutil keeps the CPU-time baselines)."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pids: Iterable[int]) -> dict[str, Any]:
        wanted = {os.getpid(), *pids}
        for pid in list(self._procs):
            if pid not in wanted:
                del self._procs[pid]
        out: dict[str, Any] = {}
        for pid in wanted:
            try:
                p = self._procs.get(pid)
                if p is None:
                    p = self._procs[pid] = psutil.Process(pid)
                    p.cpu_percent(None)  # first call only sets the baseline
                with p.oneshot():
                    out[str(pid)] = {"cpu_pct": p.cpu_percent(None),
                                     "rss_mb": p.memory_info().rss / 2**20}  # fmt: skip
            except psutil.Error:
                self._procs.pop(pid, None)
        return out


def host_sample() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {
        "cpu_pct": psutil.cpu_percent(None),
        "load1": os.getloadavg()[0],
        "mem_used_mb": (vm.total - vm.available) / 2**20,
        "mem_total_mb": vm.total / 2**20,
    }
