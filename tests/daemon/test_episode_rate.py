"""The episode rate behind EPS/H and ETA (issue 12, item 3): episodes over the game's last 30
minutes of running time, counted in a real episodes.jsonl by binary search, rough under 20."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from daemon.atarictl import formatting as fmt
from daemon.episode_log import EpisodeLog, episode_counter
from daemon.status import RATE_WINDOW_S, episode_rate, game_row, running_window

T0 = 1_700_000_000.0


def write_log(run_dir: Path, times: list[float], first: int = 1, junk: bool = False) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "episodes.jsonl", "a") as f:
        for i, t in enumerate(times):
            f.write(json.dumps({"t": t, "episode": first + i, "return": -21.0, "length": 3000,
                                "env_steps": 1000 * i}) + "\n")  # fmt: skip
            if junk and i % 97 == 0:
                f.write('{"t": 17000\n')  # a torn line, as a killed writer leaves


def brute(times: list[float], a: float, b: float) -> int:
    return sum(1 for t in times if a < t <= b)


def test_the_log_counts_episodes_in_a_range_like_a_full_scan(tmp_path: Path) -> None:
    rng = random.Random(7)
    times = sorted(T0 + rng.uniform(0, 86400) for _ in range(40_000))
    write_log(tmp_path, times, junk=True)
    log = EpisodeLog(tmp_path)
    assert (tmp_path / "episodes.jsonl").stat().st_size > 3_000_000
    for _ in range(60):
        a = T0 + rng.uniform(-100, 86500)
        b = a + rng.choice([0.5, 60.0, 1800.0, 20000.0])
        assert log.count(a, b) == brute(times, a, b), (a, b)
    assert log.count(T0 - 10, T0 + 90000) == len(times)
    assert log.count(T0 + 5, T0 + 4) == 0
    assert log.count(times[5], times[6]) == 1  # (a, b]: adjoining ranges never count twice
    assert EpisodeLog(tmp_path / "none").count(0, 1e12) == 0
    assert episode_counter(tmp_path / "none") is None


def test_a_resume_that_restarts_the_numbers_counts_per_run(tmp_path: Path) -> None:
    # The second run resumed from a checkpoint taken before episodes 9 and 10: numbers repeat.
    write_log(tmp_path, [T0 + i for i in range(1, 11)], first=1)
    write_log(tmp_path, [T0 + 100 + i for i in range(1, 6)], first=9)
    log = EpisodeLog(tmp_path)
    assert log.count(T0, T0 + 50) == 10
    assert log.count(T0 + 100, T0 + 200) == 5


def test_the_window_is_running_time_not_wall_time() -> None:
    # Ran 20 min, queued for 3 h, runs again for 15 min now: the window is the last 30 min
    # of running time, 15 min now and the newest 15 min of the first run.
    spans = [(T0, T0 + 1200), (T0 + 12000, None)]
    now = T0 + 12900
    assert running_window(spans, now) == [(T0 + 12000, now), (T0 + 300, T0 + 1200)]
    assert sum(b - a for a, b in running_window(spans, now)) == RATE_WINDOW_S


def test_rate_and_roughness(tmp_path: Path) -> None:
    # 12 episodes in the first 6 min of running (2 per minute), then steady 1 per minute.
    times = [T0 + 30 * i for i in range(1, 13)] + [T0 + 360 + 60 * i for i in range(1, 40)]
    write_log(tmp_path, times)
    log = EpisodeLog(tmp_path)
    young = episode_rate([(T0, None)], log.count, T0 + 300)  # 10 episodes in 5 minutes
    assert (young.per_hour, young.episodes, young.window_s, young.rough) == (120.0, 10, 300, True)
    old = episode_rate([(T0, None)], log.count, T0 + 360 + 60 * 39)
    # The last 30 min: 30 episodes at 1 per minute; enough to be trusted.
    assert (old.per_hour, old.episodes, old.rough) == (60.0, 30, False)
    assert episode_rate([], log.count, T0).per_hour is None
    assert episode_rate([(T0, None)], None, T0 + 60).per_hour is None
    row = game_row(game="Pong", state="RUNNING", target=100, now=T0 + 300, episodes=10,
                   rate_of=young)  # fmt: skip
    assert row.eta_s == pytest.approx(90 / 120 * 3600) and row.eta_rough
    assert fmt.eta(row.eta_s, row.eta_rough) == "~45m"
    assert fmt.eta(2.4 * 86400, True) == "~2d" and fmt.eta(2.4 * 86400, False) == "2d09h"


def test_the_eta_of_a_steady_game_holds_still(tmp_path: Path) -> None:
    """The issue's Pong: the true rate is steady (~40 episodes/h, arrivals at random), yet the
    ETA went 10d06h -> 1d22h -> 2d16h -> 9d02h in 20 minutes. Sampled every 2 minutes for 20
    minutes after an hour of running, the smoothed ETA stays within 25 % of its median."""
    rng = random.Random(3)
    times, t = [], T0
    while t < T0 + 2 * 3600:
        t += rng.expovariate(40 / 3600)
        times.append(t)
    write_log(tmp_path, times)
    log = EpisodeLog(tmp_path)
    etas = []
    for k in range(11):
        now = T0 + 3600 + 120 * k
        done = brute(times, T0, now)
        rate = episode_rate([(T0, None)], log.count, now)
        row = game_row(game="Pong", state="RUNNING", target=3000, now=now, episodes=done,
                       rate_of=rate)  # fmt: skip
        assert row.eta_s is not None and not row.eta_rough
        etas.append(row.eta_s)
    mid = sorted(etas)[len(etas) // 2]
    assert max(etas) / mid < 1.25 and min(etas) / mid > 0.75, [fmt.duration(e) for e in etas]


def test_a_slow_game_widens_its_window_until_it_has_enough_episodes(tmp_path: Path) -> None:
    # 10 episodes an hour for 8 hours: 30 minutes hold 5, so the window doubles to 2 h (20).
    times = [T0 + 360 * i for i in range(1, 81)]
    write_log(tmp_path, times)
    rate = episode_rate([(T0, None)], EpisodeLog(tmp_path).count, T0 + 8 * 3600)
    assert (rate.per_hour, rate.episodes, rate.window_s, rate.rough) == (10.0, 20, 7200, False)
    # Only 3 hours of 1 episode an hour ever: 6 h is the widest, and it is still rough.
    sparse = tmp_path / "sparse"
    write_log(sparse, [T0 + 3600 * i for i in range(1, 4)])
    rate = episode_rate([(T0, T0 + 3 * 3600)], EpisodeLog(sparse).count, T0 + 9 * 3600)
    assert (rate.per_hour, rate.episodes, rate.window_s, rate.rough) == (1.0, 3, 3 * 3600, True)


def test_torn_lines_at_either_end_of_a_range(tmp_path: Path) -> None:
    with open(tmp_path / "episodes.jsonl", "w") as f:
        for i in range(1, 11):
            f.write(json.dumps({"t": T0 + i, "episode": i}) + "\n")
            if i in (1, 5):
                f.write('{"t": 1700000099.5, "epis\n')  # torn by a killed writer
    log = EpisodeLog(tmp_path)
    assert log.count(T0, T0 + 5.5) == 5  # the line before episode 6 is torn
    assert log.count(T0 + 1, T0 + 5) == 4  # ... and the one after episode 1
    assert log.count(T0 + 5.2, T0 + 5.8) == 0
