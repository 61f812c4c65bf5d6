"""Issue 12, items 1-5, through the real `atarictl` process against ONE real daemon (module
scoped) on a tiny CPU profile. Tests run in file order, as one story:

1. the games are stopped at once: an idle box is not promoted, and `status` says why;
2. CartPole-v1 starts again: `top` shows its CPU, RSS and GPU memory and the host's load;
3. `status`'s next decision is a time in the future; after ``promote_after`` of loaded running
   the level moves to medium, with a reason that says so; at the top of the ladder the next
   decision keeps moving; pinned, it says why there is none;
4. EPS/H is the episodes of the last 30 min of running time in episodes.jsonl (docs/cli.md);
5. `history` lists each run's start and end at their own times, in order;
then the daemon shuts down and `top` and `status` answer from the database.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ctl_daemon import Daemon

pytestmark = pytest.mark.slow

PROMOTE_AFTER = 30.0
PROFILE = f"""\
games:
  CartPole-v1: 1000000
  Pong: 5
levels:
  light: {{games: 1, num_envs: 2, batch_size: 16, buffer_gb: 0.05}}
  medium: {{games: 1, num_envs: 2, batch_size: 32, buffer_gb: 0.05}}
start_level: light
autoscaler: {{ladder: [light, medium], promote_after: {PROMOTE_AFTER:g}s}}
checks: {{health: 1s, stability: 1s, telemetry: 1s, report: 1h}}
stop_grace: 10s
startsecs: 1s
checkpoint_every: 5s
device: cpu
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("ctl-truth")
    profile = root / "profile.yaml"
    profile.write_text(PROFILE)
    d = Daemon(root / "state", profile).start()
    try:
        d.wait_for("the socket", lambda: d.status())
        yield d
    finally:
        d.stop()


def status_json(d: Daemon) -> dict[str, Any]:
    out = d.ctl("status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def next_decision_line(d: Daemon) -> str:
    return next(x for x in d.ctl("status").stdout.splitlines() if x.startswith("next decision"))


def test_an_idle_box_is_not_promoted_and_status_says_why(daemon: Daemon) -> None:
    out = daemon.ctl("stop", "all")
    assert out.returncode == 0, out
    daemon.wait_for("both STOPPED", lambda: all(
        g["state"] == "STOPPED" for g in daemon.status()["games"]))  # fmt: skip
    entered = status_json(daemon)["level_entered_at"]
    # Well past promote_after since the level was entered, with stability checks every second.
    while time.time() < entered + PROMOTE_AFTER + 10:
        time.sleep(1)
    st = status_json(daemon)
    assert st["level"] == "light", st["autoscaler"]
    assert st["next_decision"] == {
        "what": "none: nothing left to train (2 STOPPED); the level stays at light", "at": None}
    assert next_decision_line(daemon) == (
        "next decision: none: nothing left to train (2 STOPPED); the level stays at light")


def test_top_shows_each_trainer_and_the_host(daemon: Daemon) -> None:
    assert daemon.ctl("start", "CartPole-v1").returncode == 0
    daemon.wait_running(checkpoint=False)
    pid = daemon.game("CartPole-v1")["pid"]

    def sampled() -> dict[str, Any] | None:
        t = json.loads(daemon.ctl("top", "--json").stdout)
        rows = [r for r in t["processes"] if r["pid"] == pid]
        return t if rows and rows[0]["rss_mib"] else None

    t = daemon.wait_for("a telemetry sample of the trainer", sampled)
    assert t["source"] == "daemon" and t["sampled_at"] <= t["now"]
    row = next(r for r in t["processes"] if r["pid"] == pid)
    assert (row["game"], row["state"]) == ("CartPole-v1", "RUNNING")
    assert row["rss_mib"] > 50  # torch and envpool are loaded
    assert t["processes"][-1]["game"] == "(daemon)"
    assert t["host"]["load1"] is not None and t["host"]["mem_total_mib"] > 0
    out = daemon.ctl("top")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.match(r"host: load \d+\.\d\d · cpu \d+% · mem [\d.]+/[\d.]+ GiB · sampled ", lines[0])
    assert lines[1].startswith("gpu")
    head = lines.index(next(x for x in lines if x.startswith("GAME")))
    assert lines[head].split() == ["GAME", "PID", "STATE", "CPU%", "RSS", "GPU", "MEM"]
    assert lines[head + 1].split()[:3] == ["CartPole-v1", str(pid), "RUNNING"]


def test_next_decision_is_in_the_future_and_the_loaded_box_is_promoted(daemon: Daemon) -> None:
    st = status_json(daemon)
    if st["level"] == "light":
        nd = st["next_decision"]
        assert nd["what"] == "promote to medium if stable and loaded"
        assert nd["at"] > st["now"]
        assert re.match(r"next decision: promote to medium if stable and loaded in \S+ \(",
                        next_decision_line(daemon))  # fmt: skip
    daemon.wait_for("promotion", lambda: daemon.status()["level"] == "medium", limit=240)
    levels = json.loads(daemon.ctl("history", "--kind", "levels", "--json").stdout)["events"]
    promote = next(e for e in levels if e["reason"].startswith("promote:"))
    assert promote["reason"].startswith("promote: stable and loaded ")
    assert "(1 trainers running, of " in promote["reason"]
    # At the top of the ladder: a time that keeps moving, never one in the past.
    for _ in range(3):
        st = status_json(daemon)
        nd = st["next_decision"]
        assert nd["what"] == "stability check (top of the ladder: falls back only if unstable)"
        assert nd["at"] > st["now"]
        time.sleep(1.5)


def test_pinned_says_why_there_is_no_next_decision(daemon: Daemon) -> None:
    assert daemon.ctl("level", "pin", "medium").returncode == 0
    try:
        assert next_decision_line(daemon) == (
            "next decision: none: pinned at medium (atarictl level unpin to resume)")
        assert status_json(daemon)["next_decision"]["at"] is None
    finally:
        assert daemon.ctl("level", "unpin").returncode == 0


def _episodes_in(run_dir: Path, a: float, b: float) -> int:
    lines = (run_dir / "episodes.jsonl").read_text().splitlines()
    times = [json.loads(x)["t"] for x in lines if x.strip()]
    return sum(1 for t in times if a < t <= b)


def test_eps_per_hour_is_the_documented_window(daemon: Daemon) -> None:
    daemon.wait_for("episodes", lambda: daemon.game("CartPole-v1")["episodes"] > 0)
    st = status_json(daemon)
    cart = next(g for g in st["games"] if g["game"] == "CartPole-v1")
    # The whole running time so far is under 30 min: every run of the game counts, whole.
    runs = json.loads(daemon.ctl("history", "--kind", "runs", "--json").stdout)["events"]
    starts = [e["at"] for e in runs if e["game"] == "CartPole-v1" and " started:" in e["what"]]
    ends = [e["at"] for e in runs if e["game"] == "CartPole-v1" and " ended:" in e["what"]]
    assert len(starts) == len(ends) + 1  # the current run is open
    spans = list(zip(starts, [*ends, st["now"]], strict=True))
    ran = sum(b - a for a, b in spans)
    assert cart["rate_window_s"] == pytest.approx(ran, abs=0.5)
    run_dir = daemon.state / "runs" / "CartPole-v1"
    n = sum(_episodes_in(run_dir, a, b) for a, b in spans)
    assert cart["rate_episodes"] == n
    assert cart["episodes_per_hour"] == pytest.approx(n / ran * 3600)
    assert cart["eta_rough"] == (n < 20)
    assert cart["eta_s"] == pytest.approx((cart["target"] - cart["episodes"]) / n * ran)


def test_history_shows_each_run_start_and_end_in_order(daemon: Daemon) -> None:
    out = daemon.ctl("history", "--json")
    events = json.loads(out.stdout)["events"]
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    runs = [e for e in events if e["kind"] == "run"]
    # Every ended run: its start line comes first, its end line later, at the end's time.
    for end in (e for e in runs if " ended: " in e["what"]):
        pid = end["what"].split()[1]
        start = next(e for e in runs if e["what"].startswith(f"pid {pid} started: "))
        assert start["at"] < end["at"] and events.index(start) < events.index(end)
    stopped = [e for e in runs if "operator stop" in (e["reason"] or "")]
    assert stopped and all(" ended: " in e["what"] for e in stopped)
    text = daemon.ctl("history", "--kind", "runs").stdout.splitlines()[2:]
    first_pid = runs[0]["what"].split()[1]
    mine = [x for x in text if f"pid {first_pid} " in x]
    assert len(mine) == 2 and "started:" in mine[0] and "ended:" in mine[1]


def test_top_and_status_from_the_database_when_the_daemon_is_down(daemon: Daemon) -> None:
    pid = daemon.game("CartPole-v1")["pid"]
    assert daemon.ctl("shutdown").returncode == 0
    out = daemon.ctl("top")
    assert out.returncode == 3, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("daemon DOWN: last samples from the database ")
    assert any(x.split()[:2] == ["CartPole-v1", str(pid)] for x in lines)
    data = json.loads(daemon.ctl("top", "--json").stdout)
    assert data["source"] == "database" and data["sampled_at"] <= data["now"]
    assert next_decision_line(daemon) == (
        "next decision: none: the daemon is down (it decides nothing)")
