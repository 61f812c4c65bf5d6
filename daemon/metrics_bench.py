"""What a Prometheus scrape costs the daemon: ``python -m daemon.metrics_bench``.

A real daemon with real trainers (two tiny games that never finish) in a temporary state dir, with
its endpoint on a free port. Phases alternate, each ``--seconds`` long: nobody scrapes, then one
scrape a second (``--interval``), then again. The daemon's CPU time (user + system, every thread)
is read from /proc through psutil at each phase's edges, so the trainers' load is not counted;
the difference between a scraped and an unscraped phase is what the scrapes cost, side by side in
one run. One table at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

PROFILE = """\
games:
  CartPole-v1: 100000000
  Acrobot-v1: 100000000
levels:
  light: {{games: 2, num_envs: 2, batch_size: 32, buffer_gb: 0.05}}
start_level: light
autoscaler: {{ladder: [light]}}
checks: {{health: 15s, stability: 5m, telemetry: 30s, report: 30m}}
startsecs: 2s
checkpoint_every: 90s
device: cpu
trainer_args: ["--threads", "1", "--env-threads", "1"]
metrics: {{listen: "127.0.0.1:{port}"}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        size = len(r.read())
    return time.perf_counter() - t0, size


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def _phase(p: psutil.Process, url: str, seconds: float, interval: float | None) -> dict:
    c0, t0 = _cpu(p), time.monotonic()
    times: list[float] = []
    size = 0
    next_at = t0
    while time.monotonic() - t0 < seconds:
        if interval is not None and time.monotonic() >= next_at:
            took, size = _scrape(url)
            times.append(took)
            next_at += interval
        time.sleep(0.05)
    wall = time.monotonic() - t0
    return {"cpu": _cpu(p) - c0, "wall": wall, "times": times, "size": size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daemon.metrics_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    ap.add_argument("--pairs", type=int, default=3, help="unscraped/scraped phase pairs")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    ns = ap.parse_args(argv)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with tempfile.TemporaryDirectory(prefix="atari-metrics-bench-") as tmp:
        profile = Path(tmp) / "profile.yaml"
        profile.write_text(PROFILE.format(port=port))
        with open(Path(tmp) / "daemon.out", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--profile", str(profile), "--state-dir",
                 str(Path(tmp) / "state")], stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                with contextlib.suppress(OSError):
                    if b'atari_game_state{atari_game_state="RUNNING",game="Acrobot-v1"} 1.0' in \
                            urllib.request.urlopen(url, timeout=5).read():  # fmt: skip
                        break
                if time.monotonic() > deadline or proc.poll() is not None:
                    print((Path(tmp) / "daemon.out").read_text()[-3000:], file=sys.stderr)
                    return 1
                time.sleep(1.0)
            time.sleep(ns.seconds / 4)  # past the start-up: trainers loaded, jobs scheduled
            daemon = psutil.Process(proc.pid)
            rows = []
            for _ in range(ns.pairs):
                rows.append(("none", _phase(daemon, url, ns.seconds, None)))
                rows.append((f"1 per {ns.interval:g} s", _phase(daemon, url, ns.seconds,
                                                                 ns.interval)))  # fmt: skip
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    print(f"# daemon CPU with and without scrapes; {ns.pairs} pairs of {ns.seconds:g} s phases, "
          f"2 tiny trainers running, psutil {psutil.__version__}")  # fmt: skip
    print("\n| phase | scrapes | daemon CPU s | % of one core | scrape ms (median) | bytes |")
    print("|---|---|---:|---:|---:|---:|")
    pct: dict[str, list[float]] = {}
    for i, (kind, r) in enumerate(rows):
        share = 100.0 * r["cpu"] / r["wall"]
        pct.setdefault(kind, []).append(share)
        med = f"{1000 * statistics.median(r['times']):.1f}" if r["times"] else "-"
        print(f"| {i + 1} | {kind} | {r['cpu']:.2f} | {share:.3f} | {med} "
              f"| {r['size'] or '-'} |")  # fmt: skip
    idle, scraped = (statistics.mean(v) for v in pct.values())
    print(f"\nmean % of one core: no scrapes {idle:.3f}, scraped {scraped:.3f}; "
          f"the scrapes cost {scraped - idle:.3f} % of one core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
