"""The Prometheus endpoint (daemon/metrics.py) of a real daemon with real trainers: /metrics is
scraped over HTTP, parsed with prometheus-client's own parser, and its per-game values equal
``atarictl status --json``. The shipped Grafana dashboard and alert rules use only names the live
daemon exports. GPU numbers through the fake NVML boundary; a port in use is one error line."""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import ProfileError, load_profile
from daemon.metrics import Endpoint, Publisher, Snapshot
from daemon.status import normalize_gpu
from daemon.telemetry import GpuProbe
from tests.daemon.harness import Daemon, write_profile
from tests.daemon.test_observability import FakeNvml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "docs" / "grafana").glob("*.json"))
RULES = sorted((ROOT / "docs" / "prometheus").glob("*.yml"))
DONE_GAME, STOPPED_GAME = "CartPole-v1", "Acrobot-v1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> Any:
    for s in fams[family].samples:
        if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def ctl(state: Path, *args: str) -> str:
    argv = [sys.executable, "-m", "daemon.atarictl", "--state-dir", str(state), *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def ctl_status(state: Path) -> dict[str, Any]:
    return json.loads(ctl(state, "status", "--json"))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, int]]:
    tmp = tmp_path_factory.mktemp("metrics")
    port = free_port()
    profile = write_profile(tmp / "p.yaml", {DONE_GAME: 15, STOPPED_GAME: 1_000_000},
                            extra=f"metrics: {{listen: '127.0.0.1:{port}'}}")  # fmt: skip
    d = Daemon(tmp, profile).start()
    try:
        d.wait_for("the endpoint", lambda: _answers(port))
        yield d, port
    finally:
        d.cleanup()


def _answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def test_per_game_metrics_equal_atarictl_status(live: tuple[Daemon, int]) -> None:
    d, port = live
    d.wait_states({DONE_GAME: "DONE", STOPPED_GAME: "RUNNING"})

    def trainer_sampled() -> Any:  # the telemetry job has seen the running trainer
        v = value(scrape(port), "atari_game_trainer_resident_memory_bytes", game=STOPPED_GAME)
        return v and v > 50 * 2**20
    d.wait_for("trainer RSS in /metrics", trainer_sampled, 60)
    running = scrape(port)
    assert value(running, "atari_game_state", game=STOPPED_GAME, atari_game_state="RUNNING") == 1
    assert value(running, "atari_game_trainer_cpu_ratio", game=STOPPED_GAME) >= 0
    assert value(running, "atari_game_uptime_seconds", game=STOPPED_GAME) > 0

    ctl(d.state, "stop", STOPPED_GAME)
    d.wait_states({STOPPED_GAME: "STOPPED"})
    # Frozen now: the loop publishes a snapshot every 5 s; wait for one built after the stop,
    # then read both views.
    status = ctl_status(d.state)
    d.wait_for("a fresh snapshot", lambda: value(
        scrape(port), "atari_daemon_snapshot_timestamp_seconds") > status["now"] + 0.5, 30)
    fams = scrape(port)
    status = ctl_status(d.state)
    snap_at = value(fams, "atari_daemon_snapshot_timestamp_seconds")
    checked = 0
    for row in status["games"]:
        g = row["game"]
        assert value(fams, "atari_game_state", game=g, atari_game_state=row["state"]) == 1
        assert sum(s.value for s in fams["atari_game_state"].samples
                   if s.labels["game"] == g) == 1  # fmt: skip
        assert value(fams, "atari_game_episodes", "atari_game_episodes_total", game=g) == \
            row["episodes"]  # fmt: skip
        for family, key in (("atari_game_target_episodes", "target"),
                            ("atari_game_avg100_return", "avg100"),
                            ("atari_game_best_avg100_return", "best"),
                            ("atari_game_episodes_per_hour", "episodes_per_hour"),
                            ("atari_game_eta_seconds", "eta_s"),
                            ("atari_game_work_left_seconds", "work_left_s")):  # fmt: skip
            assert value(fams, family, game=g) == pytest.approx(row[key]), (g, family)
        # Ages: both views are "now minus the checkpoint time", at their own now.
        age = value(fams, "atari_game_last_checkpoint_age_seconds", game=g)
        assert snap_at - age == pytest.approx(status["now"] - row["checkpoint_age_s"], abs=1e-3)
        checked += 1
    assert checked == 2
    assert value(fams, "atari_game_avg100_return", game=DONE_GAME) is not None
    # Ended runs by outcome: the runs table's own count.
    db = sqlite3.connect(f"file:{d.state / 'atari.db'}?mode=ro", uri=True)
    rows = db.execute("SELECT game, outcome, COUNT(*) FROM runs WHERE ended_at IS NOT NULL "
                      "GROUP BY game, outcome").fetchall()  # fmt: skip
    db.close()
    assert ("Acrobot-v1", "stopped", 1) in rows and ("CartPole-v1", "done", 1) in rows
    for game, outcome, n in rows:
        assert value(fams, "atari_game_restarts", "atari_game_restarts_total", game=game,
                     outcome=outcome) == n  # fmt: skip
    # Autoscaler and daemon.
    assert value(fams, "atari_autoscaler_state", atari_autoscaler_state=status["level_state"]) == 1
    assert value(fams, "atari_autoscaler_level_info", "atari_autoscaler_level_info",
                 level=status["level"]) == 1  # fmt: skip
    assert value(fams, "atari_autoscaler_pinned") == (1 if status["pinned"] else 0)
    assert value(fams, "atari_autoscaler_reboots_last_hour") == status["boots_last_hour"]
    assert value(fams, "atari_autoscaler_time_in_state_seconds") == pytest.approx(
        status["now"] - status["level_entered_at"], abs=5)
    assert value(fams, "atari_daemon_up") == 1
    assert value(fams, "atari_daemon_loop_pass_seconds", "atari_daemon_loop_pass_seconds_count") > 0
    assert value(fams, "atari_daemon_job_errors", "atari_daemon_job_errors_total",
                 job="health") == 0  # fmt: skip
    assert value(fams, "atari_gpu_available") == 0  # no NVML here
    assert value(fams, "process_resident_memory_bytes") > 0  # the daemon's own


def _names_used(text: str) -> set[str]:
    return set(re.findall(r"\b(?:atari|process)_[a-z0-9_]+", text))


def _exported(fams: dict[str, Any]) -> set[str]:
    names = set()
    for f in fams.values():
        names.add(f.name)
        names |= {s.name for s in f.samples}
        suffix = {"counter": ["_total"], "info": ["_info"], "summary": ["_count", "_sum"],
                  "histogram": ["_count", "_sum", "_bucket"]}.get(f.type, [])  # fmt: skip
        names |= {f.name + x for x in suffix}
    return names


def test_dashboard_and_alerts_use_only_exported_metrics(live: tuple[Daemon, int]) -> None:
    _, port = live
    exported = _exported(scrape(port))
    assert DASHBOARDS and RULES
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        exprs += [a["expr"] for a in dash.get("annotations", {}).get("list", []) if "expr" in a]
        assert len(exprs) >= 6, path
        used = set().union(*(_names_used(e) for e in exprs))
        assert used and not used - exported, (path.name, sorted(used - exported))
    for path in RULES:
        doc = yaml.safe_load(path.read_text())
        rules = [r for g in doc["groups"] for r in g["rules"]]
        assert {r["alert"] for r in rules} >= {"AtariGameFatal", "AtariNoEpisodeProgress",
                                               "AtariAutoscalerFallback", "AtariGpuHot",
                                               "AtariDaemonDown"}  # fmt: skip
        used = set().union(*(_names_used(r["expr"]) for r in rules))
        assert used and not used - exported, (path.name, sorted(used - exported))


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian: apt-get install prometheus)")
def test_alert_rules_pass_promtool() -> None:
    for path in RULES:
        out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr


def _collect(status: dict[str, Any]) -> dict[str, Any]:
    snap = Snapshot(status=status, restarts={}, promotions=2, fallbacks=1, procs={},
                    boot_time=1.0, at=status["now"])  # fmt: skip
    pub = Publisher(lambda: snap, time.monotonic)
    pub.refresh(force=True)
    from prometheus_client import generate_latest

    text = generate_latest(Endpoint(pub, "test").registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_gpu_metrics_through_the_nvml_boundary() -> None:
    gpu = normalize_gpu(GpuProbe(FakeNvml(present=True)).sample())
    fams = _collect({"now": 100.0, "games": [], "gpu": gpu, "level": "light",
                     "level_entered_at": 40.0, "autoscaler": {"ladder": ["light", "medium"]},
                     "level_state": "fallback"})  # fmt: skip
    labels = {"gpu": "0", "name": "H100"}
    assert value(fams, "atari_gpu_available") == 1
    assert value(fams, "atari_gpu_utilization_ratio", **labels) == pytest.approx(0.87)
    assert value(fams, "atari_gpu_memory_used_bytes", **labels) == 2 * 2**30
    assert value(fams, "atari_gpu_memory_total_bytes", **labels) == 80 * 2**30
    assert value(fams, "atari_gpu_temperature_celsius", **labels) == 61
    assert value(fams, "atari_gpu_power_watts", **labels) == 250
    assert value(fams, "atari_autoscaler_state", atari_autoscaler_state="fallback") == 1
    assert value(fams, "atari_autoscaler_level_rung") == 0
    assert value(fams, "atari_autoscaler_time_in_state_seconds") == 60
    assert value(fams, "atari_autoscaler_promotions", "atari_autoscaler_promotions_total") == 2
    absent = normalize_gpu(GpuProbe(FakeNvml(present=False)).sample())
    fams = _collect({"now": 1.0, "games": [], "gpu": absent})
    assert value(fams, "atari_gpu_available") == 0
    assert fams["atari_gpu_temperature_celsius"].samples == []
    assert not math.isnan(value(fams, "atari_daemon_up"))


def test_port_in_use_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        endpoint = Endpoint(Publisher(lambda: None, time.monotonic), "test")  # type: ignore[arg-type, return-value]
        assert endpoint.start(f"127.0.0.1:{port}") is False
    out = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(out) == 1 and "metrics endpoint not started" in out[0], out
    assert "Address already in use" in out[0]


@pytest.mark.parametrize("listen", ["localhost", "127.0.0.1:http", ":9787", "1.2.3.4:70000"])
def test_bad_listen_names_the_field(tmp_path: Path, listen: str) -> None:
    extra = f"metrics: {{listen: '{listen}'}}"
    p = write_profile(tmp_path / "p.yaml", {"CartPole-v1": 5}, extra=extra)
    with pytest.raises(ProfileError, match=r"p\.yaml:\d+.*metrics\.listen"):
        load_profile(p)


def test_null_listen_turns_it_off(tmp_path: Path) -> None:
    p = write_profile(tmp_path / "p.yaml", {"CartPole-v1": 5}, extra="metrics: {listen: null}")
    assert load_profile(p).metrics.listen is None
    from daemon.metrics import start_endpoint

    assert start_endpoint(object(), object(), None) is None


def test_the_loop_publishes_every_refresh_period_and_keeps_the_last_good_snapshot() -> None:
    t = [0.0]
    built: list[int] = []

    def build() -> Snapshot:
        if len(built) == 2:
            raise RuntimeError("store locked")
        built.append(1)
        return Snapshot(status={"now": t[0]}, restarts={}, promotions=0, fallbacks=0, procs={},
                        boot_time=0.0, at=t[0])  # fmt: skip

    pub = Publisher(build, lambda: t[0])
    pub.refresh()
    first = pub.snapshot()
    for t[0] in (1.0, 4.99):
        pub.refresh()
    assert pub.snapshot() is first and len(built) == 1
    t[0] = 5.0
    pub.refresh()
    second = pub.snapshot()
    assert second is not first and second.at == 5.0
    t[0] = 10.0
    pub.refresh()  # the build fails: the scrape keeps the last good one, the error is counted
    assert pub.snapshot() is second and pub.loop.job_errors == {"metrics": 1}


def test_fleet_metrics_only_in_fleet_mode() -> None:
    fams = _collect({"now": 1.0, "games": [], "gpu": None})
    assert fams["atari_fleet_games_held"].samples == []  # one box: the family, no samples
    assert fams["atari_fleet_lease_token"].samples == []
    fams = _collect({"now": 1.0, "games": [], "gpu": None, "fleet": {
        "held": {"Pong": 7, "Breakout": 3}, "lease_s": 60.0, "renew_failures": 2,
        "claim_failures": 0}})  # fmt: skip
    assert value(fams, "atari_fleet_games_held") == 2
    assert value(fams, "atari_fleet_lease_seconds") == 60
    assert value(fams, "atari_fleet_renewal_failures") == 2
    assert value(fams, "atari_fleet_claim_failures") == 0
    assert value(fams, "atari_fleet_lease_token", game="Pong") == 7
