"""Logging format, telemetry (fake NVML boundary and the real call path), scheduler jobs."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog

from daemon.checks import STALL_ENV, Checks, _stall_while_file_exists
from daemon.config import Checks as Intervals
from daemon.logging import configure_logging
from daemon.supervisor import Check
from daemon.telemetry import GpuProbe, ProcessProbe, gpu_summary, host_sample


def test_journal_lines_carry_syslog_priorities_and_fields() -> None:
    buf = io.StringIO()
    configure_logging(buf, tty=False, journal=True, level="debug")
    log = structlog.get_logger("t")
    log.error("boom", game="Pong")
    log.warning("careful", reason="two words")
    log.info("fine", n=3)
    log.debug("detail")
    try:
        raise RuntimeError("x")
    except RuntimeError:
        log.exception("caught")
    lines = buf.getvalue().splitlines()
    assert lines[:4] == ["<3>boom game=Pong", '<4>careful reason="two words"', "<6>fine n=3",
                         "<7>detail"]  # fmt: skip
    assert lines[4].startswith("<3>caught exception=") and len(lines) == 5  # one line
    configure_logging(io.StringIO(), tty=False)


def test_a_log_event_is_one_journal_line_whatever_it_holds() -> None:
    # journald ends a stdout line at a newline and also at a NUL; a field json cannot encode (a
    # tuple key) must not raise out of the log call into the main loop.
    buf = io.StringIO()
    configure_logging(buf, tty=False, journal=True)
    log = structlog.get_logger("t")
    log.warning("a\nb\x00c\rd", procs={(1, 2): 3}, v=float("nan"), raw="x\x00y\nz")
    out = buf.getvalue()
    assert out.count("\n") == 1 and "\x00" not in out and "\r" not in out, repr(out)
    assert out.startswith("<4>a | b") and "procs=" in out and "v=NaN" in out, repr(out)
    configure_logging(io.StringIO(), tty=False)


def test_terminal_lines_are_readable_without_prefix() -> None:
    buf = io.StringIO()
    configure_logging(buf, tty=True)
    structlog.get_logger("t").info("hello", game="Pong")
    out = buf.getvalue()
    assert "hello" in out and "Pong" in out and not out.startswith("<")
    configure_logging(io.StringIO(), tty=False)


_STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z <6>hello game=Pong$")
_LOG_ONE = (
    "import structlog; from daemon.logging import configure_logging; configure_logging(); "
    "structlog.get_logger('t').info('hello', game='Pong')"
)


def _log_to_file(path: Path, journal_stream: str | None) -> str:
    """A real process whose stdout is a file, with JOURNAL_STREAM as systemd would set it."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with open(path, "w") as out:
        subprocess.run([sys.executable, "-c", _LOG_ONE], stdout=out, env=env, check=True)
    return path.read_text().strip()


def test_lines_off_journald_carry_a_utc_timestamp(tmp_path: Path) -> None:
    # A nohup log or a plain file: nothing else records when a line was written.
    assert _STAMPED.match(_log_to_file(tmp_path / "a.log", None))
    # JOURNAL_STREAM inherited from a service but naming another file: still not the journal.
    assert _STAMPED.match(_log_to_file(tmp_path / "b.log", "1:2"))


def test_lines_on_the_journal_stream_have_no_timestamp(tmp_path: Path) -> None:
    # systemd names the stream by device:inode; when it is the very file we write to, journald
    # stamps the lines itself and must see the <N> prefix first.
    target = tmp_path / "journal.log"
    target.touch()
    st = target.stat()
    assert _log_to_file(target, f"{st.st_dev}:{st.st_ino}") == "<6>hello game=Pong"


class FakeNvml:
    """The NVML boundary: a driver with one GPU, or none."""

    class NVMLError(Exception):
        pass

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, present: bool) -> None:
        self.present = present

    def nvmlInit(self) -> None:
        if not self.present:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return "h"

    def nvmlDeviceGetName(self, h: str) -> bytes:
        return b"H100"

    def nvmlDeviceGetMemoryInfo(self, h: str) -> SimpleNamespace:
        return SimpleNamespace(used=2 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h: str) -> SimpleNamespace:
        return SimpleNamespace(gpu=87)

    def nvmlDeviceGetComputeRunningProcesses(self, h: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=42, usedGpuMemory=2**30)]

    def nvmlDeviceGetTemperature(self, h: str, kind: int) -> int:
        return 61

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:
        return 250_000


class GpuWithoutSensors(FakeNvml):
    """A GPU that answers memory but not power or temperature (MIG slices, some boards)."""

    class NVMLError_NotSupported(FakeNvml.NVMLError):
        pass

    def nvmlDeviceGetTemperature(self, h: str, kind: int) -> int:
        raise self.NVMLError_NotSupported("Not Supported")

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:
        raise self.NVMLError_NotSupported("Not Supported")


def test_a_missing_gpu_sensor_is_not_a_missing_gpu() -> None:
    sample = GpuProbe(GpuWithoutSensors(present=True)).sample()
    assert sample["gpu"] == "ok", sample
    gpu = sample["gpus"][0]
    assert gpu["power_w"] is None and gpu["temperature_c"] is None and gpu["util_pct"] == 87
    assert gpu_summary(sample) == "H100 87% 2048/81920 MiB n/a C n/a W"


def test_gpu_sample_with_a_gpu() -> None:
    sample = GpuProbe(FakeNvml(present=True)).sample()
    gpu = sample["gpus"][0]
    assert sample["gpu"] == "ok" and gpu["util_pct"] == 87 and gpu["power_w"] == 250.0
    assert gpu["processes"] == {"42": 1024.0}
    assert gpu_summary(sample) == "H100 87% 2048/81920 MiB 61C 250W"


def test_gpu_sample_degrades_to_no_gpu() -> None:
    sample = GpuProbe(FakeNvml(present=False)).sample()
    assert sample == {"gpu": "no GPU", "reason": "NVMLError: Driver Not Loaded"}
    assert gpu_summary(sample) == "no GPU"


def test_real_nvml_call_path() -> None:
    torch = pytest.importorskip("torch")
    sample = GpuProbe().sample()  # the real pynvml module
    if torch.cuda.is_available():
        assert sample["gpu"] == "ok" and sample["gpus"]
    else:
        assert sample["gpu"] == "no GPU" and "NVMLError" in sample["reason"]


def test_host_and_process_samples() -> None:
    host = host_sample()
    assert 0 < host["mem_used_mb"] < host["mem_total_mb"]
    probe = ProcessProbe()
    probe.sample([])
    sample = probe.sample([])
    assert len(sample) == 1 and next(iter(sample.values()))["rss_mb"] > 1


def test_jobs_only_post_and_an_error_does_not_stop_the_scheduler() -> None:
    posted: list[object] = []
    calls = {"n": 0}
    lock = threading.Lock()

    def post(event: object) -> None:
        with lock:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("first post fails")
            posted.append(event)

    checks = Checks(Intervals(health=0.05, stability=3600, telemetry=3600, report=3600), post)
    checks.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(posted) < 2:
            time.sleep(0.05)
        # The failing job is still scheduled, and so is every other job at its own interval.
        now = time.time()
        next_health, next_stability = checks.next_run("health"), checks.next_run("stability")
    finally:
        checks.shutdown()
    assert posted[:2] == [Check("health"), Check("health")]
    assert next_health is not None and next_health <= now + 1
    assert next_stability is not None and now + 3000 < next_stability <= now + 3600


def test_next_run_before_the_scheduler_starts_is_none_not_an_error() -> None:
    # The daemon's first loop pass (status, the first metrics snapshot) runs before the
    # scheduler starts, while its jobs are pending and have no next_run_time attribute yet.
    checks = Checks(Intervals(health=60, stability=3600, telemetry=3600, report=3600), print)
    assert checks.next_run("stability") is None
    checks.start()
    try:
        at = checks.next_run("stability")
    finally:
        checks.shutdown()
    assert at is not None and at > time.time() + 3000


def test_stall_switch_blocks_until_the_file_is_removed(tmp_path: Path, monkeypatch) -> None:
    stall = tmp_path / "stall"
    stall.touch()
    monkeypatch.setenv(STALL_ENV, str(stall))
    done = threading.Event()
    t = threading.Thread(target=lambda: (_stall_while_file_exists(), done.set()))
    t.start()
    assert not done.wait(1.2)  # still blocked over two 0.5 s steps
    stall.unlink()
    assert done.wait(30)
    t.join()
