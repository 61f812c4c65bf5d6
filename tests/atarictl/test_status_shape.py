"""One status shape (daemon/status.py): the reply a real supervisor sends is what atarictl
formats, and the live daemon and the offline database read agree on the same database."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from daemon.atarictl import formatting as fmt
from daemon.atarictl.offline import offline_status
from daemon.clock import FakeClock
from daemon.level_source import FixedLevel
from daemon.process import ProcessManager
from daemon.status import GameRow, from_dict
from daemon.store import Store
from daemon.supervisor import Supervisor
from tests.support.fake_os import FakeOs
from tests.support.profiles import MANAGER_PROFILE

H100 = {"gpu": "ok", "gpus": [{"name": "H100", "util_pct": 87, "mem_used_mb": 40960.0,
                               "mem_total_mb": 81920.0, "temperature_c": 61, "power_w": 300.0,
                               "processes": {}}]}  # fmt: skip


def _supervisor(tmp_path: Path) -> tuple[Supervisor, FakeClock]:
    profile = MANAGER_PROFILE.but(gpu_cost_per_hour=2.5).load(tmp_path / "p.yaml")
    clock = FakeClock()
    store = Store.open(tmp_path / "atari.db")
    mgr = ProcessManager(profile, store, clock, FakeOs(), tmp_path / "runs", tmp_path / "logs",
                         "light")  # fmt: skip
    mgr.restore()
    sup = Supervisor(profile, store, clock, mgr, FixedLevel("light", started_at=clock.now()))
    start = clock.now()
    # CartPole-v1 ran for 30 minutes an hour ago (5 episodes: 10/h), and queues now.
    run = store.run_started("CartPole-v1", 77, start - 3600, level="light", num_envs=4,
                            batch_size=32, proc_start_time=None)  # fmt: skip
    store.run_ended(run, start - 1800, exit_code=0, signal=None, reason="level change")
    sup.loop_once()  # Pong and Breakout start (2 slots at light); CartPole-v1 queues
    clock.advance(1800)
    now = clock.now()
    # The rate is episodes.jsonl over the last 30 min of running time (daemon/status.py); the
    # trainer's own episodes_per_hour (here wildly off) is not what status shows.
    for name, episodes, t0 in (("Pong", 10, start), ("Breakout", 6, start),
                               ("CartPole-v1", 5, start - 3600)):  # fmt: skip
        run_dir = tmp_path / "runs" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "episodes.jsonl").write_text("".join(
            json.dumps({"t": t0 + 1800 * i / episodes, "episode": i, "return": 1.0}) + "\n"
            for i in range(1, episodes + 1)))  # fmt: skip
        mgr.games[name].progress = {
            "episodes": episodes, "episodes_per_hour": 999.0, "best_return": 3.5,
            "avg100": 1.25, "last_checkpoint_time": now - 30,
        }  # fmt: skip
    sup.loop_once()  # past startsecs: both RUNNING
    for g in mgr.games.values():
        mgr._persist(g)  # what the health job writes
    return sup, clock


def _ask(s: Supervisor, cmd: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(s.handle_request({"cmd": cmd, "args": {}})))
    t.start()
    while t.is_alive():
        s.loop_once(timeout=0.05)
    return out


def test_atarictl_formats_what_a_real_daemon_sends(tmp_path: Path) -> None:
    sup, _clock = _supervisor(tmp_path)
    sup.gpu, sup.last_gpu = object(), H100  # NVML is the boundary: its sample, as telemetry has it
    reply = _ask(sup, "status")
    assert reply["ok"] is True
    st = json.loads(json.dumps(reply["result"]))  # over the socket it is JSON
    assert from_dict(st).to_dict() == st  # exactly the documented shape, nothing else
    by = {g["game"]: g for g in st["games"]}
    assert by["Pong"]["episodes_per_hour"] == pytest.approx(20.0)
    assert by["Pong"]["eta_s"] == pytest.approx(2 * 3600)  # 40 episodes left at 20/h
    assert (by["Pong"]["rate_episodes"], by["Pong"]["rate_window_s"]) == (10, 1800)
    assert by["CartPole-v1"]["eta_s"] is None
    assert by["CartPole-v1"]["work_left_s"] == pytest.approx(5400)  # 15 left at 10/h
    # 2 slots: Pong 2h, Breakout 2h, CartPole-v1 1.5h -> 5.5h of work over 2 slots = 2.75h.
    assert st["total_eta_s"] == pytest.approx(2.75 * 3600)
    assert st["projected_cost"] == pytest.approx(6.875)
    # Under 20 episodes behind each rate: the ETAs are rough, and shown so.
    assert by["Pong"]["eta_rough"] and st["total_eta_rough"]
    text = fmt.format_status(st)
    assert "level light for 30m00s · not pinned · reboots in last hour: 0" in text
    assert "H100 87% util, 40.0/80.0 GiB, 61°C" in text
    assert text.rstrip().endswith("total ETA ~3h · projected cost $6.88 at $2.5/h")
    rows = [line for line in text.splitlines() if line.startswith(("Pong", "Breakout"))]
    assert rows[0].index("10/50") == rows[1].index("6/30")  # aligned columns


def test_the_live_daemon_and_the_offline_read_agree_on_one_database(tmp_path: Path) -> None:
    sup, clock = _supervisor(tmp_path)
    sup.store.save_level_state(state="light", entered_at=sup.started_at, pinned=None,
                               updated_at=clock.now())  # fmt: skip
    live = sup.cmd_status({})
    offline = offline_status(tmp_path / "atari.db", clock.now())
    # What only a live daemon knows: its processes, the next decision, the GPU, the slots.
    live_only = {"pid", "uptime_s", "reason"}

    def rows(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {g["game"]: {k: v for k, v in g.items() if k not in live_only}
                for g in st["games"]}  # fmt: skip

    assert rows(live) == rows(offline)
    assert set(rows(live)) == {"Pong", "Breakout", "CartPole-v1"}
    for key in ("level", "level_entered_at", "pinned", "boots_last_hour"):
        assert live[key] == offline[key], key
    assert set(offline) == set(live) - {"level_state", "autoscaler", "gpu_sample", "summary",
                                        "counts", "pressure", "fleet"}  # fmt: skip
    assert offline["box"] == live["box"]  # the box whose rows these are
    assert offline["source"] == "database" and live["source"] == "daemon"
    assert GameRow(**offline["games"][0])  # the same row type
