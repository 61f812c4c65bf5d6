"""Multi-GPU placement (daemon/placement.py): the rule with plain numbers, and the process
manager giving each trainer CUDA_VISIBLE_DEVICES from a fake NVML boundary with two GPUs (the real
pynvml call keeps its test in test_observability.py); one GPU changes nothing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from daemon.placement import Gpu, choose_gpu, gpus_from_sample
from daemon.telemetry import GpuProbe
from tests.daemon.test_observability import FakeNvml
from tests.support.fake_os import build_manager, pid
from tests.support.profiles import MANAGER_PROFILE


def test_the_gpu_with_the_most_free_memory_wins() -> None:
    assert choose_gpu([Gpu(0, 10_000)], {}) is None  # one GPU: nothing to choose
    assert choose_gpu([], {}) is None
    assert choose_gpu([Gpu(0, 10_000), Gpu(1, 30_000)], {}) == 1
    # Our trainer 7 on GPU 1 has not allocated yet: it counts as 1024 MiB there.
    assert choose_gpu([Gpu(0, 29_500), Gpu(1, 30_000)], {7: 1}) == 0
    # Once NVML lists it, its real use is in free_mb already, and it sizes the next guess.
    listed = Gpu(1, 30_000, frozenset({7}), {7: 4_000.0})
    assert choose_gpu([Gpu(0, 29_500), listed], {7: 1}) == 1
    assert choose_gpu([Gpu(0, 26_500), listed], {7: 1, 8: 1}) == 0  # 8 pending: 4000 MiB
    # A tie goes to the GPU with fewer of ours, then the lower index.
    assert choose_gpu([Gpu(0, 5_000, frozenset({3}), {3: 1.0}), Gpu(1, 5_000)], {3: 0}) == 1
    assert choose_gpu([Gpu(0, 5_000), Gpu(1, 5_000)], {}) == 0


class TwoGpus(FakeNvml):
    """GPU 0 has 60 GiB used, GPU 1 is empty; NVML lists what the test says."""

    def __init__(self, present: bool) -> None:
        super().__init__(present)
        self.used = {0: 60 * 2**30, 1: 0}

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # type: ignore[override]
        return i

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:  # type: ignore[override]
        return SimpleNamespace(used=self.used[h], total=80 * 2**30)

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[SimpleNamespace]:  # type: ignore[override]
        return []


def test_the_manager_spreads_trainers_and_records_the_device(tmp_path: Path) -> None:
    profile = MANAGER_PROFILE.level("light", games=3).load(tmp_path / "p.yaml")
    mgr, fake, _clock, store = build_manager(tmp_path, profile)
    nvml = TwoGpus(present=True)
    mgr.gpus = lambda: gpus_from_sample(GpuProbe(nvml).sample())
    mgr.tick()
    devices = {g: fake.env[pid(mgr, g)].get("CUDA_VISIBLE_DEVICES") for g in mgr.games}
    # GPU 1 has 80 GiB free, GPU 0 20 GiB: all three fit GPU 1 better (1 GiB each pending).
    assert devices == {"Pong": "1", "Breakout": "1", "CartPole-v1": "1"}
    assert {r["game"]: r["device"] for r in store.runs()} == devices
    assert any("on GPU 1 (most free memory)" in d["reason"] for d in store.decisions(game="Pong"))


def test_equal_gpus_take_turns(tmp_path: Path) -> None:
    profile = MANAGER_PROFILE.level("light", games=3).load(tmp_path / "p.yaml")
    mgr, fake, _clock, _store = build_manager(tmp_path, profile)
    nvml = TwoGpus(present=True)
    nvml.used = {0: 0, 1: 0}
    mgr.gpus = lambda: gpus_from_sample(GpuProbe(nvml).sample())
    mgr.tick()
    order = [g.name for g in sorted(mgr.games.values(), key=lambda g: pid(mgr, g.name))]
    assert [fake.env[pid(mgr, n)]["CUDA_VISIBLE_DEVICES"] for n in order] == ["0", "1", "0"]


def test_one_gpu_or_a_cpu_profile_changes_nothing(tmp_path: Path) -> None:
    mgr, fake, _clock, store = build_manager(tmp_path, MANAGER_PROFILE.load(tmp_path / "p.yaml"))
    mgr.gpus = lambda: gpus_from_sample(GpuProbe(FakeNvml(present=True)).sample())
    mgr.tick()
    assert all(env == {} for env in fake.env.values()) and len(fake.env) == 2
    assert {r["device"] for r in store.runs()} == {None}
    cpu = MANAGER_PROFILE.but(device="cpu").load(tmp_path / "c" / "p.yaml")
    mgr2, fake2, _c, _s = build_manager(tmp_path / "c", cpu)
    mgr2.gpus = lambda: gpus_from_sample(GpuProbe(TwoGpus(present=True)).sample())
    mgr2.tick()
    assert all(env == {} for env in fake2.env.values())
