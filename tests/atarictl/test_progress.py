"""Daemon-run evals, `atarictl plot` and the periodic report, on real parts.

- A real daemon with ``eval.every`` evaluates a game's best.pt once a slot is idle, through the
  real evaluator subprocess: a weak model (the daemon's own 5-episode run) becomes
  best-eval.pt, the session's trained model then replaces it, and a weaker one never does;
  status, models and history show the evals.
- The daemon's report check writes Markdown + HTML (the plot embedded) + PNG, keeps only
  ``reports.keep``; `atarictl report` prints the latest or makes one now.
- `atarictl plot` draws ten games (a synthetic week of a real store and real episodes.jsonl
  files) into a PNG and an SVG; bad input is one line with its exit code.
- The profile's ``eval:`` and ``reports:`` fields are validated with file:line errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from ctl_daemon import Daemon

from daemon.config import ProfileError, load_profile
from daemon.reporting.bench import synth_state

ROOT = Path(__file__).resolve().parents[2]

PROFILE = """\
games:
  CartPole-v1: 5
levels:
  light: {games: 1, num_envs: 2, batch_size: 16, buffer_gb: 0.05}
  medium: {games: 1, num_envs: 2, batch_size: 16, buffer_gb: 0.05}
start_level: light
checks: {health: 1s, stability: 60s, telemetry: 5s, report: 2s}
stop_grace: 20s
startsecs: 0s
checkpoint_every: 2s
device: cpu
gpu_cost_per_hour: 2.5
eval: {every: 1s, episodes: 5, threads: 1, device: cpu}
reports: {keep: 2}
"""


def ctl(state: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.atarictl", "--state-dir", str(state), *args],
        capture_output=True, text=True, timeout=300, cwd=cwd,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def daemon_evals(state: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{state / 'atari.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM evals WHERE source = 'daemon' ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return [dict(r) for r in rows]


def replace(src: Path, dst: Path) -> None:
    tmp = dst.with_name(".swap.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


@pytest.fixture(scope="module")
def evald(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("eval-daemon")
    (root / "profile.yaml").write_text(PROFILE)
    d = Daemon(root / "state", root / "profile.yaml").start()
    try:
        d.wait_for("CartPole-v1 DONE", lambda: d.game("CartPole-v1")["state"] == "DONE")
        yield d
    finally:
        d.stop()


@pytest.mark.slow
def test_daemon_evals_keep_the_best_eval_model(evald: Daemon, cartpole_model: Path) -> None:
    run = evald.state / "runs" / "CartPole-v1"
    best, kept = run / "best.pt", run / "best-eval.pt"
    # 1. The daemon's own 5-episode run left a near-random best.pt; the slot is idle now.
    rows = evald.wait_for("the first daemon eval", lambda: daemon_evals(evald.state))
    weak_sha, weak_mean = sha(best), rows[0]["mean"]
    assert rows[0]["model_sha256"] == weak_sha and rows[0]["episodes"] == 5
    weak = run.parent / "weak.pt"
    shutil.copyfile(best, weak)
    evald.wait_for("best-eval.pt", kept.is_file)
    assert sha(kept) == weak_sha
    # 2. A better best.pt (the session's trained model) becomes the new best-eval.pt.
    replace(cartpole_model / "best.pt", best)
    strong_sha = sha(best)
    rows = evald.wait_for("the second eval", lambda: (r := daemon_evals(evald.state))[1:] and r)
    assert rows[1]["model_sha256"] == strong_sha and rows[1]["mean"] > weak_mean
    assert rows[1]["mean"] >= 400
    evald.wait_for("best-eval.pt replaced", lambda: sha(kept) == strong_sha)
    info = json.loads((run / "best-eval.json").read_text())
    assert info["sha256"] == strong_sha and info["mean"] == pytest.approx(rows[1]["mean"])
    # 3. A weaker best.pt is evaluated (a new sha) but never replaces it; best.pt is untouched.
    replace(weak, best)
    rows = evald.wait_for("the third eval", lambda: (r := daemon_evals(evald.state))[2:] and r)
    assert rows[2]["model_sha256"] == weak_sha
    assert sha(kept) == strong_sha and sha(best) == weak_sha
    # The same best.pt is not evaluated again (a sha already measured).
    assert [r["model_sha256"] for r in daemon_evals(evald.state)] == [weak_sha, strong_sha,
                                                                       weak_sha]  # fmt: skip

    out = ctl(evald.state, "status")
    assert out.returncode == 0, out.stderr
    assert f"latest evals: CartPole-v1 {rows[2]['mean']:.1f} (best model" in out.stdout
    st = json.loads(ctl(evald.state, "status", "--json").stdout)
    assert st["latest_evals"]["CartPole-v1"]["id"] == rows[2]["id"]
    hist = ctl(evald.state, "history", "--kind", "evals")
    assert hist.returncode == 0, hist.stderr
    assert hist.stdout.count(" eval ") == 3 and "by daemon" in hist.stdout
    decisions = ctl(evald.state, "history", "--kind", "decisions").stdout
    assert decisions.count("new best eval") == 2  # the weak one first, then the trained one
    models = json.loads(ctl(evald.state, "models", "--json").stdout)["models"]
    row = next(m for m in models if m["kind"] == "best-eval")
    assert row["path"] == str(kept) and row["eval"] == pytest.approx(info["mean"])
    assert "best-eval" in ctl(evald.state, "models").stdout
    # A backup takes best-eval.pt and its score with the run's other files.
    archive = evald.state.parent / "with-best-eval.tar.gz"
    got = ctl(evald.state, "backup", str(archive))
    assert got.returncode == 0, got.stderr
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert any(n.endswith("runs/CartPole-v1/best-eval.pt") for n in names), names
    assert any(n.endswith("runs/CartPole-v1/best-eval.json") for n in names), names


@pytest.mark.slow
def test_report_check_writes_bounded_reports_and_atarictl_prints_them(evald: Daemon) -> None:
    reports = evald.state / "reports"

    def made() -> list[Path]:
        return sorted(reports.glob("report-*.md")) if reports.is_dir() else []

    first = evald.wait_for("a report", made)[0]
    # keep: 2 — older ones are deleted as new ones come (every 2 s here).
    evald.wait_for("a newer report", lambda: made() and made()[0] != first)
    assert len(made()) <= 2 and not first.exists() and not first.with_suffix(".png").exists()
    md_path = made()[-1]
    md = md_path.read_text()
    for heading in ("## Level", "## Games", "## Latest evals",
                    "## Reboots and crashes in this period", "## GPU"):  # fmt: skip
        assert heading in md
    assert "| CartPole-v1 | DONE | 5/5 (100%)" in md
    html = md_path.with_suffix(".html").read_text()
    assert "<img" in html and "data:image/png;base64," in html and "<table>" in html
    assert md_path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = ctl(evald.state, "report")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# atari-supervisor report, ")
    now = ctl(evald.state, "report", "--now", "--json")
    assert now.returncode == 0, now.stderr
    data = json.loads(now.stdout)
    assert data["made_now"] and Path(data["html"]).is_file()


def test_plot_ten_games_png_and_svg(tmp_path: Path) -> None:
    state = tmp_path / "state"
    synth_state(state, 10, 400)
    got = ctl(state, "plot", "--out", str(tmp_path / "all.png"), "--json")
    assert got.returncode == 0, got.stderr
    drawn = json.loads(got.stdout)
    assert len(drawn["games"]) == 10
    assert all(g["episodes"] == 400 and g["evals"] == 7 for g in drawn["games"].values())
    assert drawn["reboots"] == 2 and drawn["level_changes"] == 3

    import imageio.v3 as iio

    img = iio.imread(tmp_path / "all.png")
    assert img.shape[0] > 1200 and img.shape[1] > 1600  # 5 rows x 2 columns of panels
    svg = ctl(state, "plot", "pong", "Breakout", "--since", "3d", "--out", str(tmp_path / "p.svg"))
    assert svg.returncode == 0, svg.stderr
    assert "2 games" in svg.stdout and (tmp_path / "p.svg").read_text().startswith("<?xml")


def test_plot_and_report_with_a_game_that_has_no_episodes_yet(tmp_path: Path) -> None:
    # A queued game (a run dir, no episodes.jsonl) beside games with curves: its panel says so.
    state = tmp_path / "state"
    synth_state(state, 2, 50)
    (state / "runs" / "Pong").mkdir()
    got = ctl(state, "plot", "--out", str(tmp_path / "p.png"), "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["games"]["Pong"]["episodes"] == 0
    got = ctl(state, "report", "--now")
    assert got.returncode == 0, got.stderr


def test_report_eps_h_and_eta_are_the_ones_status_computes(tmp_path: Path) -> None:
    # One formula for both: the episodes in each game's last running time (episodes.jsonl and
    # the runs table), not the trainer's last rate kept in the games table.
    import time

    from daemon.atarictl.offline import offline_status
    from daemon.durations import eta_text
    from daemon.reporting.report import gather, markdown, num
    from daemon.store.store import Store

    state, now = tmp_path / "state", time.time()
    synth_state(state, 2, 400, start=now - 7 * 86400)
    store = Store.open(state / "atari.db")
    try:
        for name in store.games():
            store.upsert_game(name, episodes_per_hour=12345.0)  # a stale trainer figure
    finally:
        store.close()
    status = {g["game"]: g for g in offline_status(state / "atari.db", now)["games"]}
    report = gather(state, now, now - 86400)
    assert len(report["games"]) == len(status) == 2
    md = markdown(report, "curves.png")
    for g in report["games"]:
        s = status[g.game]
        assert (g.episodes_per_hour, g.work_left_s, g.eta_rough) == (
            s["episodes_per_hour"], s["work_left_s"], s["eta_rough"])  # fmt: skip
        assert g.episodes_per_hour not in (None, 12345.0)
        # ~2.4 episodes/h over the widest window: too few episodes, so the ETA reads "~7d".
        assert g.eta_rough
        cells = f"| {num(g.episodes_per_hour, 0)} | {eta_text(g.work_left_s, True)} |"
        assert cells in md and cells.endswith("d |") and "~" in cells

def test_plot_bad_input_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    synth_state(state, 2, 50)
    got = ctl(state, "plot", "--out", str(tmp_path / "x.jpg"))
    assert got.returncode == 2 and got.stderr.count("\n") == 1 and ".png or .svg" in got.stderr
    got = ctl(state, "plot", "Pongg", "--out", str(tmp_path / "x.png"))
    assert got.returncode == 5 and "unknown game 'Pongg'" in got.stderr
    got = ctl(tmp_path / "empty", "plot")
    assert got.returncode == 1 and "nothing to plot" in got.stderr


@pytest.mark.parametrize(
    ("section", "field", "message"),
    [
        ("eval: {every: -5m}", "eval.every", ""),
        ("eval: {episodes: 0}", "eval.episodes", ""),
        ("eval: {device: gpu}", "eval.device", "unknown device 'gpu'"),
        ("eval: {idle_slot_only: maybe}", "eval.idle_slot_only", "true or false"),
        ("reports: {keep: 0}", "reports.keep", ""),
    ],
)
def test_eval_and_reports_fields_are_validated(
    tmp_path: Path, section: str, field: str, message: str
) -> None:
    text = PROFILE.replace("eval: {every: 1s, episodes: 5, threads: 1, device: cpu}\n", "")
    text = text.replace("reports: {keep: 2}\n", "") + section + "\n"
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    line = str(err.value)
    assert "\n" not in line and f"{path}:{text.count(chr(10))}" in line and field in line
    assert message in line


def test_eval_defaults_run_no_daemon_evals(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE.replace("eval: {every: 1s, episodes: 5, threads: 1, device: cpu}\n",
                                    ""))  # fmt: skip
    p = load_profile(path)
    assert p.eval.every is None and p.eval.idle_slot_only and p.reports.keep == 2
