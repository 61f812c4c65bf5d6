"""``atari-supervisord bench``: the daemon's own cost next to its trainers', stop and resume times.

It runs the real daemon on a profile (default cpu-tiny) in a temporary state dir:
1. start; wait until the level's games are RUNNING;
2. sample CPU % and RSS of the daemon and of each trainer once a second for ``--seconds``;
3. SIGTERM the daemon; time until every trainer has checkpointed and exited and the daemon too;
4. start it again; time until every game is RUNNING again, resumed from its checkpoint;
5. SIGTERM again and print one table.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from daemon.config import DEFAULT_PROFILE, load_profile


class _Run:
    def __init__(self, profile: Path, state: Path, tag: str) -> None:
        self.state = state
        out = open(state / f"daemon-{tag}.out", "ab")  # noqa: SIM115 - closed in wait_exit
        self._out = out
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "--profile", str(profile), "--state-dir", str(state)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def games(self) -> dict[str, dict[str, Any]]:
        db = self.state / "atari.db"
        if not db.exists():
            return {}
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
                conn.row_factory = sqlite3.Row
                return {r["name"]: dict(r) for r in conn.execute("SELECT * FROM games")}
        except sqlite3.OperationalError:
            return {}

    def progress(self, game: str) -> dict[str, Any]:
        try:
            return json.loads((self.state / "runs" / game / "progress.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait(self, what: str, cond: Any, timeout: float = 600.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: the daemon exited ({self.proc.returncode}) while "
                                 f"waiting for {what}; see {self.state}")  # fmt: skip
            value = cond()
            if value:
                return value
            time.sleep(0.1)
        raise SystemExit(f"bench: timed out waiting for {what}; see {self.state}")

    def stop(self) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(600)
        self._out.close()
        if rc != 0:
            raise SystemExit(f"bench: daemon exited {rc} after SIGTERM; see {self.state}")
        return time.monotonic() - t0


def _sample(pids: dict[str, int], seconds: float) -> dict[str, dict[str, float]]:
    procs = {}
    for name, pid in pids.items():
        try:
            procs[name] = psutil.Process(pid)
            procs[name].cpu_percent(None)
        except psutil.Error:
            continue
    cpu: dict[str, list[float]] = {n: [] for n in procs}
    rss: dict[str, list[float]] = {n: [] for n in procs}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(1.0)
        for name, p in procs.items():
            try:
                cpu[name].append(p.cpu_percent(None))
                rss[name].append(p.memory_info().rss / 2**20)
            except psutil.Error:
                continue
    return {
        n: {"cpu": statistics.fmean(cpu[n]) if cpu[n] else float("nan"),
            "rss": max(rss[n]) if rss[n] else float("nan")}
        for n in procs
    }  # fmt: skip


def run_bench(profile_path: Path, seconds: float, state: Path) -> str:
    profile = load_profile(profile_path)
    slots = profile.level(profile.start_level).games
    state.mkdir(parents=True, exist_ok=True)

    first = _Run(profile_path, state, "1")

    def running(run: _Run) -> dict[str, dict[str, Any]] | None:
        g = run.games()
        up = {n: r for n, r in g.items() if r["state"] == "RUNNING"}
        want = min(slots, sum(1 for r in g.values() if r["state"] != "DONE"))
        return up if g and len(up) >= want else None

    up = first.wait("games RUNNING", lambda: running(first))
    t_first = time.monotonic() - first.started
    pids = {"daemon": first.proc.pid} | {n: r["pid"] for n, r in up.items()}
    usage = _sample(pids, seconds)
    resumed = [n for n, r in first.games().items() if r["state"] == "RUNNING"]
    t_stop = first.stop()
    stopped = {n: first.progress(n) for n in resumed}
    not_clean = [n for n, p in stopped.items() if p.get("status") not in ("stopped", "done")]

    second = _Run(profile_path, state, "2")

    def resumed_all() -> bool:
        g = second.games()
        return all(
            n in g and g[n]["state"] == "RUNNING"
            and second.progress(n).get("pid") == g[n]["pid"]
            and second.progress(n).get("status") == "running"
            for n in resumed
        )  # fmt: skip

    def state_running() -> bool:
        g = second.games()
        return all(n in g and g[n]["state"] == "RUNNING" for n in resumed)

    second.wait("games RUNNING again", state_running)
    t_running = time.monotonic() - second.started
    second.wait("trainers resumed", resumed_all)
    t_resumed = time.monotonic() - second.started
    kept = all(second.progress(n).get("episodes", 0) >= stopped[n].get("episodes", 0)
               and second.progress(n).get("env_steps", 0) >= stopped[n].get("env_steps", 0)
               for n in resumed)  # fmt: skip
    second.stop()

    trainers = [n for n in usage if n != "daemon"]
    lines = [
        f"profile {profile_path.name}, {seconds:g} s sampled, host {psutil.cpu_count()} CPUs, "
        f"state {state}",
        "",
        "| process | CPU % of one core (mean) | RSS MB (max) |",
        "|---|---|---|",
    ]
    for n in ["daemon", *trainers]:
        if n in usage:
            label = "atari-supervisord" if n == "daemon" else f"trainer {n}"
            lines.append(f"| {label} | {usage[n]['cpu']:.2f} | {usage[n]['rss']:.0f} |")
    lines += [
        "",
        "| measurement | seconds |",
        "|---|---|",
        f"| start until {len(up)} games RUNNING (first start, startsecs={profile.startsecs:g}) "
        f"| {t_first:.1f} |",
        f"| SIGTERM until all trainers checkpointed and exited, daemon exited | {t_stop:.1f} |",
        f"| restart until all games RUNNING again | {t_running:.1f} |",
        f"| restart until every trainer resumed from its checkpoint (progress running) "
        f"| {t_resumed:.1f} |",
        "",
        f"graceful stop clean: {'yes' if not not_clean else 'NO: ' + ', '.join(not_clean)}; "
        f"counters kept across the restart: {'yes' if kept else 'NO'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="atari-supervisord bench", description=__doc__.split("\n")[0])
    p.add_argument("--profile", type=Path, default=DEFAULT_PROFILE)
    p.add_argument("--seconds", type=float, default=60.0, help="sampling time (default 60)")
    p.add_argument("--state-dir", type=Path, help="default: a new temporary directory")
    args = p.parse_args(argv)
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="atari-bench-"))
    sys.stdout.write(run_bench(args.profile, args.seconds, state) + "\n")
    return 0
