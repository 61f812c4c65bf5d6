"""GPU placement on a multi-GPU box: each new trainer goes to the GPU with the most free memory.

Pure: the manager hands in the GPUs as NVML sees them now (``telemetry.GpuProbe``) and the
trainers it has already placed; the result is the CUDA device index the trainer is given as
``CUDA_VISIBLE_DEVICES`` (it then sees one GPU as ``cuda:0``). A trainer started a moment ago may
not have allocated its memory yet, so each of ours that NVML does not list on its GPU counts as
the measured per-trainer footprint (or ``DEFAULT_TRAINER_MB`` before any is measured). One GPU, or
none, places nothing: the trainer's environment stays as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_TRAINER_MB = 1024.0


@dataclass(frozen=True)
class Gpu:
    index: int
    free_mb: float
    pids: frozenset[int] = frozenset()  # processes NVML lists on it
    used_by_pid: Mapping[int, float] | None = None


def gpus_from_sample(sample: Mapping[str, Any] | None) -> list[Gpu]:
    if not sample or sample.get("gpu") != "ok":
        return []
    out = []
    for i, g in enumerate(sample.get("gpus") or []):
        procs = {int(p): float(mb) for p, mb in (g.get("processes") or {}).items()}
        out.append(Gpu(int(g.get("index", i)), float(g["mem_total_mb"]) - float(g["mem_used_mb"]),
                       frozenset(procs), procs))  # fmt: skip
    return out


def choose_gpu(gpus: list[Gpu], placed: Mapping[int, int]) -> int | None:
    """The device for the next trainer, or None with fewer than two GPUs. ``placed`` is
    pid -> device of our live trainers. Most free memory wins (after our trainers NVML does not
    show yet); ties go to the GPU with fewer of ours, then the lower index."""
    if len(gpus) < 2:
        return None
    seen = [mb for g in gpus for pid, mb in (g.used_by_pid or {}).items() if pid in placed]
    per_trainer = sum(seen) / len(seen) if seen else DEFAULT_TRAINER_MB

    def score(g: Gpu) -> tuple[float, int, int]:
        ours = [pid for pid, dev in placed.items() if dev == g.index]
        pending = sum(1 for pid in ours if pid not in g.pids)
        return (-(g.free_mb - pending * per_trainer), len(ours), g.index)

    return min(gpus, key=score).index
