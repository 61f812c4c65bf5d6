"""`atarictl top`'s one shape (daemon/top.py) from what the telemetry probes really return: the
host and process samples of this machine (psutil) and a GPU sample through the NVML boundary."""

from __future__ import annotations

import os

from daemon.atarictl import formatting as fmt
from daemon.telemetry import GpuProbe, ProcessProbe, host_sample
from daemon.top import DAEMON, build, gpu_memory_by_pid
from tests.daemon.test_observability import FakeNvml

T0 = 1_700_000_000.0


def test_trainers_get_their_cpu_rss_and_gpu_memory_and_strangers_are_left_out() -> None:
    probe = ProcessProbe()
    me, parent = os.getpid(), os.getppid()
    procs = probe.sample([parent])  # the daemon (this process) and one "trainer"
    gpu = GpuProbe(FakeNvml(present=True)).sample()  # pid 42 holds 1 GiB on the H100
    procs["42"] = {"cpu_pct": 180.0, "rss_mb": 3000.0}  # a trainer NVML knows
    procs["77"] = {"cpu_pct": 5.0, "rss_mb": 10.0}  # a pid that is none of ours
    t = build(source="daemon", now=T0 + 3, sampled_at=T0, host=host_sample(), processes=procs,
              gpu=gpu, games={parent: "CartPole-v1", 42: "Pong"}, daemon_pid=me,
              states={"Pong": "RUNNING", "CartPole-v1": "RUNNING"})  # fmt: skip
    assert [r["game"] for r in t["processes"]] == ["Pong", "CartPole-v1", DAEMON]
    pong = t["processes"][0]
    assert (pong["pid"], pong["cpu_pct"], pong["rss_mib"], pong["gpu_mem_mib"]) == (
        42, 180.0, 3000.0, 1024.0)  # fmt: skip
    assert t["processes"][2]["rss_mib"] > 1  # this very process, measured by psutil
    assert t["host"]["mem_total_mib"] > 0 and t["host"]["load1"] is not None
    assert t["gpus"] == [{"index": 0, "name": "H100", "util_pct": 87.0,
                          "mem_used_mib": 2048.0, "mem_total_mib": 81920.0}]  # fmt: skip
    text = fmt.format_top(t)
    assert "sampled 3s ago" in text.splitlines()[0]
    assert text.splitlines()[1] == "gpu0 H100: 87% util, 2.00 GiB/80.00 GiB"
    row = next(x for x in text.splitlines() if x.startswith("Pong"))
    assert row.split() == ["Pong", "42", "RUNNING", "180.0", "2.93", "GiB", "1.00", "GiB"]


def test_no_gpu_and_no_sample_yet_say_so() -> None:
    none = GpuProbe(FakeNvml(present=False)).sample()
    t = build(source="daemon", now=T0, sampled_at=None, host=None, processes=None, gpu=none,
              games={}, daemon_pid=1)  # fmt: skip
    assert t["gpus"] == [] and "Driver Not Loaded" in t["gpu_reason"]
    lines = fmt.format_top(t).splitlines()
    assert lines[0].endswith("no sample yet") and lines[1].startswith("gpu: NVMLError")
    assert lines[-1] == "(no process samples yet)"
    assert gpu_memory_by_pid({"gpus": [{"processes": {"7": 1.5}}, {"processes": {"7": 2.0}}]}) == {
        7: 3.5}  # fmt: skip
