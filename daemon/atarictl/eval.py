"""``atarictl eval GAME``: how good is a model, measured with the standard protocol.

atarictl never imports torch: the evaluation runs in its own process (``python -m
trainer.evaluate``) with a bounded thread count and a raised nice value, so it never starves
the trainers the daemon runs beside it; this module picks the model, runs that process, adds
the human-normalized score and records the result in the store's ``evals`` table (the one write
atarictl makes to the database, one short transaction through ``Store``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from daemon.atarictl.client import CtlError, UnknownGame
from daemon.paths import Dirs
from daemon.scores import REFERENCE, human_normalized, reference

EXIT_NO_MODEL = 10  # 8 is --wait running out (daemon/atarictl/wait.py)
EXIT_BAD_MODEL = 11
# trainer/contract.py ExitCode values the evaluator exits with.
_UNKNOWN_GAME, _UNLOADABLE, _CORRUPT, _BAD_ARGS = 3, 5, 7, 2


class NoModel(CtlError):
    exit_code = EXIT_NO_MODEL


class BadModel(CtlError):
    exit_code = EXIT_BAD_MODEL


class EvalUsage(CtlError):
    exit_code = 2


def _known_games(paths: Dirs) -> list[str]:
    from daemon.atarictl.offline import known_games

    names = set(known_games(paths.db)) if paths.db.is_file() else set()
    if paths.runs_dir.is_dir():
        names |= {p.name for p in paths.runs_dir.iterdir() if p.is_dir()}
    return sorted(names)


def resolve_model(paths: Dirs, game: str, model: str) -> tuple[str, Path]:
    """(kind, file) for ``--model best|latest|PATH``; one-line errors with their exit codes."""
    if model not in ("best", "latest"):
        path = Path(model)
        if not path.is_file():
            raise NoModel(f"no model file at {path}; give a best.pt or checkpoint file", "no_model")
        return "path", path
    known = _known_games(paths)
    if "/" in game or game.startswith(".") or game not in known:
        raise UnknownGame(
            f"unknown game {game!r}; known games: {', '.join(known) or '-'} (names as in the "
            "profile's games:, or pass --model PATH)",
            "unknown_game",
        )
    run = paths.runs_dir / game
    if model == "best":
        best = run / "best.pt"
        if not best.is_file():
            raise NoModel(
                f"no best model for {game} yet ({best} missing: the trainer exports it once "
                "avg100 has a full window); try --model latest",
                "no_model",
            )
        return "best", best
    ckpts = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    if not ckpts:
        raise NoModel(
            f"no checkpoint for {game} yet (none in {run / 'checkpoints'}); wait for the first "
            "one (checkpoint_every) or pass --model PATH",
            "no_model",
        )
    return "latest", ckpts[-1]


def run_evaluator(
    game: str,
    model: Path,
    *,
    episodes: int,
    seed: int,
    threads: int,
    video: Path | None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run ``python -m trainer.evaluate`` and return its result; its failures as CtlErrors."""
    argv = [sys.executable, "-m", "trainer.evaluate", "--model", str(model), "--game", game,
            "--episodes", str(episodes), "--seed", str(seed),
            "--threads", str(threads)]  # fmt: skip
    if video is not None:
        argv += ["--video", str(video)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,  # Ctrl-C reaches atarictl, which then stops the evaluator
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    why = lines[-1].removeprefix("atari-eval: ") if lines else f"exit code {proc.returncode}"
    if proc.returncode == _UNKNOWN_GAME:
        raise UnknownGame(why, "unknown_game")
    if proc.returncode in (_UNLOADABLE, _CORRUPT):
        raise BadModel(why, "bad_model")
    if proc.returncode == _BAD_ARGS:
        raise EvalUsage(why, "bad_args")
    if proc.returncode != 0:
        raise CtlError(f"evaluation failed ({why})", "eval_failed")
    return json.loads(out.strip().splitlines()[-1])


def evaluate(
    paths: Dirs,
    game: str,
    model: str = "best",
    *,
    episodes: int = 10,
    seed: int = 0,
    threads: int = 1,
    video: Path | None = None,
    source: str = "atarictl",
    now: float | None = None,
) -> dict[str, Any]:
    kind, path = resolve_model(paths, game, model)
    result = run_evaluator(game, path, episodes=episodes, seed=seed, threads=threads, video=video)
    result["model"]["requested"] = kind
    result["human_normalized"] = human_normalized(result["game"], result["mean"])
    result["reference"] = reference(result["game"])
    result["at"] = time.time() if now is None else now
    result["eval_id"] = record(paths, result, kind, source)
    return result


def record(paths: Dirs, result: dict[str, Any], kind: str, source: str) -> int | None:
    """Store the result when the state dir has a database (no daemon ever ran: nothing to add
    to); returns the row id."""
    if not paths.db.is_file():
        return None
    from daemon.store.store import Store, StoreError

    m = result["model"]
    try:
        store = Store.open(paths.db)
        try:
            return store.record_eval(
                at=result["at"], game=result["game"], model_kind=kind, model_path=m["path"],
                model_sha256=m["sha256"], model_episode=m["episode"],
                train_avg100=m["train_avg100"], episodes=result["episodes"],
                mean=result["mean"], median=result["median"], std=result["std"],
                min=result["min"], max=result["max"],
                human_normalized=result["human_normalized"], seed=result["seed"],
                wall_s=result["wall_s"], device=result["device"], source=source,
                detail={k: result[k] for k in ("protocol", "scores", "lengths", "truncated",
                                               "video", "threads")},
            )  # fmt: skip
        finally:
            store.close()
    except StoreError as exc:
        raise CtlError(f"evaluated, but not recorded: {exc}", "db") from None


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}" if abs(v - round(v)) > 1e-9 else f"{v:.0f}"


def _cap(protocol: dict[str, Any]) -> str:
    if "max_frames" in protocol:
        return f"{protocol['max_frames']:,}-frame cap"
    return "episode's step cap"  # CartPole-v1: 500 steps, a perfect episode


def format_result(r: dict[str, Any], db: Path) -> str:
    m = r["model"]
    ep = "-" if m["episode"] is None else m["episode"]
    train = f", training avg100 {_num(m['train_avg100'])}" if m["train_avg100"] is not None else ""
    n = r["episodes"]
    lines = [
        f"{r['game']} {m['requested']} model {m['path']} (episode {ep}{train}, "
        f"sha256 {m['sha256'][:12]})",
        f"{n} episode{'s' if n != 1 else ''} · seed {r['seed']} · {r['device']}, "
        f"{r['threads']} thread{'s' if r['threads'] != 1 else ''} · "
        + ", ".join(f"{k} {v}" for k, v in r["protocol"].items() if k != "episode"),
        f"score  mean {_num(r['mean'])}  median {_num(r['median'])}  std {_num(r['std'])}  "
        f"min {_num(r['min'])}  max {_num(r['max'])}"
        + (f"  ({r['truncated']} hit the {_cap(r['protocol'])})" if r["truncated"] else ""),
    ]
    ref = r.get("reference")
    if ref is not None:
        lines.append(
            f"human-normalized {r['human_normalized']:.1f}% (random {_num(ref['random'])}, "
            f"human {_num(ref['human'])}; {REFERENCE})"
        )
    else:
        lines.append(f"human-normalized - (no published reference for {r['game']})")
    rec = f"recorded as eval {r['eval_id']} in {db}" if r["eval_id"] else "not recorded (no db)"
    lines.append(f"wall {r['wall_s']:.1f}s ({r['wall_s'] / max(1, n):.2f} s/episode) · {rec}")
    if r.get("video"):
        v = r["video"]
        lines.append(
            f"video {v['path']}: episode 1, {v['frames']} frames {v['width']}x{v['height']} "
            f"at {v['fps']} fps"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ atarictl wiring


def add_parser(sub: Any, parents: list[Any]) -> None:
    """``atarictl eval`` (registered by daemon/atarictl/cli.py)."""
    e = sub.add_parser("eval", parents=parents, help="evaluate a model (standard protocol)")
    e.add_argument("game", metavar="GAME")
    e.add_argument("--model", default="best", metavar="best|latest|PATH",
                   help="best.pt (default), the newest checkpoint, or a file")  # fmt: skip
    e.add_argument("--episodes", type=int, default=10, metavar="N", help="default 10")
    e.add_argument("--seed", type=int, default=0, metavar="S", help="default 0")
    e.add_argument("--threads", type=int, default=1, metavar="T",
                   help="torch and envpool threads of the evaluator (default 1)")  # fmt: skip
    e.add_argument("--video", type=Path, metavar="FILE.mp4|FILE.gif",
                   help="record episode 1 in full colour")  # fmt: skip


def cmd_eval(ctl: Any) -> int:
    a = ctl.args
    if a.episodes < 1 or a.threads < 1:
        raise EvalUsage("--episodes and --threads must be >= 1", "bad_args")
    result = evaluate(
        ctl.paths, a.game, a.model, episodes=a.episodes, seed=a.seed, threads=a.threads,
        video=a.video,
    )  # fmt: skip
    ctl.out(format_result(result, ctl.paths.db), result)
    return 0
