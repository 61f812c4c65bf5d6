"""Pressure signals (daemon/pressure.py): PSI on this machine's real files and on fixture trees
for the edge cases (no PSI, cpu without ``full``, garbage), the daemon's cgroup under systemd,
memory headroom under a cgroup limit, swap rates and OOM-kill counts; the NVML extras through
the fake NVML boundary."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.atarictl.formatting import pressure_line
from daemon.autoscaler.shedding import reading_from, signals_over
from daemon.config import PressurePolicy
from daemon.pressure import PressureProbe, cgroup_dir, memory_headroom, parse_psi, psi_value
from daemon.telemetry import GpuProbe, throttle_names
from tests.daemon.test_observability import FakeNvml

PSI = (
    "some avg10=1.50 avg60=2.25 avg300=0.10 total=123\n"
    "full avg10=0.75 avg60=0.50 avg300=0 total=9\n"
)
MEMINFO = "MemTotal:       8000000 kB\nMemFree:  100 kB\nMemAvailable:   2000000 kB\n"


def _tree(root: Path, *, psi: bool = True, cgroup: str = "0::/system.slice/atari.service\n",
          vmstat: str = "pswpin 100\npswpout 40\noom_kill 2\n") -> tuple[Path, Path]:  # fmt: skip
    proc, cg = root / "proc", root / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "vmstat").write_text(vmstat)
    if psi:
        (proc / "pressure").mkdir()
        for res in ("memory", "io", "cpu"):
            (proc / "pressure" / res).write_text(PSI)
    cg.mkdir()
    return proc, cg


def test_parse_psi_on_this_machines_real_files() -> None:
    base = Path("/proc/pressure")
    if not base.is_dir():
        pytest.skip("this kernel has no PSI")
    for res in ("memory", "io", "cpu"):
        parsed = parse_psi((base / res).read_text())
        assert parsed is not None and 0.0 <= parsed["some"]["avg10"] <= 100.0
    sample = PressureProbe(under_systemd=False).sample(0.0)
    assert set(sample["psi"]) == {"memory", "io", "cpu"}
    assert sample["psi_source"] == "host:/proc/pressure"
    assert 0 < sample["mem_available_mb"] < sample["mem_total_mb"]
    assert isinstance(sample["oom_kill"], int)


def test_parse_psi_edge_cases() -> None:
    assert parse_psi(PSI) == {"some": {"avg10": 1.5, "avg60": 2.25},
                              "full": {"avg10": 0.75, "avg60": 0.5}}  # fmt: skip
    # cpu.pressure before 5.13 has no "full" line
    assert parse_psi("some avg10=3.00 avg60=1.00 avg300=0 total=1\n") == {
        "some": {"avg10": 3.0, "avg60": 1.0}}  # fmt: skip
    assert parse_psi("") is None
    assert parse_psi("some avg10=x avg60=1\nfull nonsense\n") is None


def test_missing_psi_gives_telemetry_without_pressure(tmp_path: Path) -> None:
    proc, cg = _tree(tmp_path, psi=False)
    sample = PressureProbe(proc, cg, under_systemd=True).sample(0.0)
    assert "psi" not in sample
    assert sample["mem_available_mb"] == pytest.approx(2000000 / 1024)
    assert sample["oom_kill"] == 2 and sample["oom_kill_source"] == "host"
    assert pressure_line(sample).startswith("no PSI")


def test_under_systemd_the_daemons_own_cgroup_is_read(tmp_path: Path) -> None:
    proc, cg = _tree(tmp_path)
    unit = cg / "system.slice" / "atari.service"
    unit.mkdir(parents=True)
    (unit / "memory.pressure").write_text(PSI.replace("0.75", "42.00"))
    (unit / "io.pressure").write_text(PSI)
    (unit / "cpu.pressure").write_text("some avg10=3.00 avg60=1.00 avg300=0 total=1\n")
    (unit / "memory.max").write_text(str(512 * 2**20))
    (unit / "memory.current").write_text(str(530 * 2**20))
    # 30 MiB of it is inactive page cache: not counted (the kernel drops it before any OOM).
    (unit / "memory.stat").write_text(f"anon 1\ninactive_file {30 * 2**20}\nactive_file 0\n")
    (unit / "memory.events").write_text("low 0\nhigh 3\nmax 1\noom 0\noom_kill 0\n")
    sample = PressureProbe(proc, cg, under_systemd=True).sample(0.0)
    assert sample["psi_source"] == f"cgroup:{unit}"
    assert psi_value(sample, "memory", "full", "avg10") == 42.0
    assert "full" not in sample["psi"]["cpu"]
    assert sample["oom_kill"] == 0 and sample["oom_kill_source"] == "cgroup"
    # The unit's MemoryMax= is tighter than the host: 12 MiB of 512 left.
    assert memory_headroom(sample) == (12.0, 512.0)
    reading = reading_from(0.0, sample, None, {}, [])
    assert signals_over(reading, PressurePolicy())["mem_available"] == (
        "cgroup memory headroom 2.3% of 512 MiB < mem_available_min_pct=5%")
    # Not under systemd: the host's files, whatever the cgroup says.
    host = PressureProbe(proc, cg, under_systemd=False).sample(0.0)
    assert psi_value(host, "memory", "full", "avg10") == 0.75


def test_a_hybrid_host_has_the_v2_cgroup_under_unified(tmp_path: Path) -> None:
    proc, cg = _tree(tmp_path, cgroup="4:memory:/a\n0::/a\n")
    d = cg / "unified" / "a"
    d.mkdir(parents=True)
    (d / "memory.pressure").write_text(PSI)
    v1 = cg / "memory" / "a"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(2**30))
    (v1 / "memory.usage_in_bytes").write_text(str(2**29))
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert cgroup_dir(proc, cg) == d
    sample = PressureProbe(proc, cg, under_systemd=True).sample(0.0)
    assert sample["psi_source"] == f"cgroup:{d}"
    assert sample["cgroup_mem_limit_mb"] == 1024.0 and sample["oom_kill"] == 1


def test_swap_rates_come_from_two_samples(tmp_path: Path) -> None:
    proc, cg = _tree(tmp_path)
    probe = PressureProbe(proc, cg, under_systemd=False)
    assert "swap_in_per_s" not in probe.sample(100.0)  # a rate needs two samples
    (proc / "vmstat").write_text("pswpin 400\npswpout 40\noom_kill 2\n")
    sample = probe.sample(110.0)
    assert sample["swap_in_per_s"] == 30.0 and sample["swap_out_per_s"] == 0.0
    assert "swap in/out 30/0 pages/s" in pressure_line(sample)


class ThrottledGpu(FakeNvml):
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1

    def nvmlDeviceGetEnforcedPowerLimit(self, h: str) -> int:
        return 300_000

    def nvmlDeviceGetTemperatureThreshold(self, h: str, kind: int) -> int:
        assert kind == 1
        return 87

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: str) -> int:
        return 0x1 | 0x4 | 0x20  # idle (not pressure), power cap, thermal


def test_nvml_power_limit_slowdown_temperature_and_throttle_reasons() -> None:
    sample = GpuProbe(ThrottledGpu(present=True)).sample()
    gpu = sample["gpus"][0]
    assert gpu["power_limit_w"] == 300.0 and gpu["temperature_slowdown_c"] == 87
    assert gpu["throttle_reasons"] == ["sw_power_cap", "sw_thermal"]
    assert "gpu0 throttled: sw_power_cap,sw_thermal" in pressure_line({"psi": {}}, sample)
    # An older binding without these calls: the GPU still samples, the extras are unknown.
    old = GpuProbe(FakeNvml(present=True)).sample()["gpus"][0]
    assert old["power_limit_w"] is None and old["throttle_reasons"] is None
    assert throttle_names(None) is None and throttle_names(0) == []
