"""Evaluate a trained model: ``python -m trainer.evaluate --model PATH [--episodes N] …``.

The standard protocol of the DQN Nature paper (Mnih et al. 2015), what published Atari scores
are measured with: ε = 0.05 greedy, up to 30 no-op actions at the start of each episode, and at
most 108 000 frames (27 000 agent steps at frame skip 4) per episode; real game-over episodes
(no life-loss episodes) and unclipped rewards. The observation pipeline is the trainer's (84×84
gray, 4-frame stack), so the weights see what they were trained on. CartPole-v1 episodes end
naturally (500 steps at most). Sticky actions stay off, as in the paper.

It is its own process with a bounded number of threads (``--threads``, default 1, and envpool
threads to match) and a raised nice value, so an evaluation next to running trainers never
starves them; it uses CUDA when present (``--device auto``). It prints one JSON document on
stdout; any failure is one line on stderr with an exit code of ``trainer/contract.py``: 2 bad
arguments, 3 unknown game, 5 intact but unloadable model, 7 corrupt (damaged) model file.

The model is a ``best.pt`` export or a checkpoint, loaded through ``trainer.checkpoint.decode``
(framed, checksummed, ``torch.load(weights_only=True)``: a model file is data, never a program).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.contract import CLASSIC_TASKS, ExitCode

EPSILON = 0.05
NOOP_MAX = 30
MAX_AGENT_STEPS = 27_000  # 108K frames at frame skip 4
FRAME_SKIP = 4
PROTOCOL = {
    "epsilon": EPSILON,
    "noop_max": NOOP_MAX,
    "max_frames": MAX_AGENT_STEPS * FRAME_SKIP,
    "sticky_actions": 0.0,
    "episode": "real game over (no life-loss episodes), unclipped reward",
}


class EvalError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = int(code)


@dataclass(frozen=True)
class EvalArgs:
    model: Path
    episodes: int = 10
    seed: int = 0
    epsilon: float = EPSILON
    threads: int = 1
    max_envs: int = 8
    device: str = "auto"
    nice: int = 10
    game: str | None = None  # when given, the model must be this game's
    video: Path | None = None


@dataclass(frozen=True)
class Model:
    path: Path
    sha256: str
    kind: str  # best (a best.pt export) | checkpoint
    game: str
    hidden: int
    algo: str  # pqn networks carry LayerNorms
    episode: int | None  # training episodes behind these weights
    avg100: float | None  # training avg100 behind these weights
    weights: dict[str, Any]


def parse(argv: list[str]) -> EvalArgs:
    p = argparse.ArgumentParser(
        prog="python -m trainer.evaluate", description="Evaluate a model (standard protocol)."
    )
    p.add_argument("--model", type=Path, required=True, help="best.pt or a checkpoint file")
    p.add_argument("--episodes", type=int, default=EvalArgs.episodes)
    p.add_argument("--seed", type=int, default=EvalArgs.seed)
    p.add_argument("--epsilon", type=float, default=EvalArgs.epsilon)
    p.add_argument("--threads", type=int, default=EvalArgs.threads, help="torch + envpool threads")
    p.add_argument("--max-envs", type=int, default=EvalArgs.max_envs, help="episodes at once")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=EvalArgs.device)
    p.add_argument("--nice", type=int, default=EvalArgs.nice, help="added niceness (default 10)")
    p.add_argument("--game", help="refuse a model of another game")
    p.add_argument("--video", type=Path, help="record the first episode to FILE.mp4 or FILE.gif")

    def fail(message: str) -> None:
        raise EvalError(f"atari-eval: error: {message}", ExitCode.BAD_ARGS)

    p.error = fail  # type: ignore[method-assign]
    ns = p.parse_args(argv)
    for name, low in (("episodes", 1), ("threads", 1), ("max_envs", 1)):
        if getattr(ns, name) < low:
            fail(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(ns, name)}")
    if not 0.0 <= ns.epsilon <= 1.0:
        fail(f"--epsilon must be within [0, 1], got {ns.epsilon}")
    if ns.video is not None and ns.video.suffix.lower() not in (".mp4", ".gif"):
        fail(f"--video {ns.video}: the file name must end in .mp4 or .gif")
    return EvalArgs(**vars(ns))


def load_model(path: Path) -> Model:
    from trainer import checkpoint

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EvalError(
            f"atari-eval: cannot read model {path} ({exc.strerror or exc}); "
            "give an existing best.pt or checkpoint file",
            ExitCode.BAD_ARGS,
        ) from None
    try:
        state = checkpoint.decode(data, path)
    except checkpoint.CorruptCheckpoint as exc:
        raise EvalError(
            f"atari-eval: model {path} is corrupt ({exc}); evaluate another one "
            "(--model latest, or an older checkpoint)",
            ExitCode.NO_VALID_CHECKPOINT,
        ) from None
    except checkpoint.UnloadableCheckpoint as exc:
        raise EvalError(str(exc).replace("atari-trainer:", "atari-eval:"), exc.code) from None
    config = state.get("config")
    weights = state.get("q")
    if not isinstance(config, dict) or not isinstance(weights, dict) or "game" not in config:
        raise EvalError(
            f"atari-eval: model {path} passed its checksum but holds no weights and config "
            "(not a best.pt export or a checkpoint of this trainer)",
            ExitCode.CHECKPOINT_UNLOADABLE,
        )
    if "counters" in state:  # a full checkpoint: its episode count lives in the stats
        stats = state.get("stats") or {}
        window = stats.get("window") or []
        kind, episode = "checkpoint", stats.get("episodes")
        avg100 = sum(window) / len(window) if window else None
    else:
        kind, episode, avg100 = "best", state.get("episodes"), state.get("avg100")
    return Model(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        kind=kind,
        game=str(config["game"]),
        hidden=int(config.get("hidden", 256)),
        algo=str(config.get("algo", "dqn")),
        episode=None if episode is None else int(episode),
        avg100=None if avg100 is None else float(avg100),
        weights=weights,
    )


def make_eval_envs(game: str, num_envs: int, seed: int, threads: int, render: bool = False) -> Any:
    import warnings

    import envpool

    warnings.filterwarnings("ignore", message=".*precision lowered.*")
    env_id = game if game in CLASSIC_TASKS else f"{game}-v5"
    kwargs: dict[str, Any] = {
        "env_type": "gymnasium",
        "num_envs": num_envs,
        "batch_size": num_envs,
        "num_threads": min(threads, num_envs),
        "seed": seed,  # env i gets seed + i: episode j of an eval always has seed S + j
    }
    if game not in CLASSIC_TASKS:
        kwargs.update(
            episodic_life=False,
            reward_clip=False,
            stack_num=4,
            noop_max=NOOP_MAX,
            max_episode_steps=MAX_AGENT_STEPS,
            repeat_action_probability=0.0,
        )
    if render:
        kwargs["render_mode"] = "rgb_array"
    return envpool.make(env_id, **kwargs)


def check_game(game: str) -> None:
    import envpool

    if game not in CLASSIC_TASKS and f"{game}-v5" not in envpool.list_all_envs():
        raise EvalError(
            f"atari-eval: unknown game {game!r}; use an envpool Atari name (Pong, MsPacman) "
            f"or {', '.join(CLASSIC_TASKS)}",
            ExitCode.UNKNOWN_GAME,
        )


def build_network(model: Model, envs: Any, device: Any) -> Any:
    from trainer.envs import env_spec
    from trainer.network import make_qnetwork

    q = make_qnetwork(env_spec(envs), model.hidden, layer_norm=model.algo == "pqn")
    try:
        q.load_state_dict(model.weights)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise EvalError(
            f"atari-eval: model {model.path} does not fit the {model.game} network ({first}); "
            "it was made by another trainer version",
            ExitCode.CHECKPOINT_UNLOADABLE,
        ) from None
    return q.to(device).eval()


def play(
    q: Any,
    envs: Any,
    num_envs: int,
    epsilon: float,
    rng: Any,
    device: Any,
    on_frame: Any = None,
) -> list[dict[str, Any]]:
    """One episode per env (a finished env's auto-reset episode is not counted, so short
    episodes are not favoured). ``on_frame(rgb, score)`` gets every rendered frame of env 0."""
    import numpy as np
    import torch

    obs, _ = envs.reset()
    returns = np.zeros(num_envs)
    lengths = np.zeros(num_envs, dtype=np.int64)
    done = np.zeros(num_envs, dtype=bool)
    truncated = np.zeros(num_envs, dtype=bool)
    n_actions = int(envs.action_space.n)
    if on_frame is not None:
        on_frame(envs.render()[0], 0.0)
    with torch.inference_mode():
        while not done.all():
            greedy = q(torch.as_tensor(obs, device=device)).argmax(1).cpu().numpy()
            explore = rng.random(num_envs) < epsilon
            actions = np.where(explore, rng.integers(0, n_actions, num_envs), greedy)
            obs, reward, term, trunc, _ = envs.step(actions.astype(np.int32))
            live = ~done
            returns[live] += reward[live]
            lengths[live] += 1
            if on_frame is not None and live[0]:
                on_frame(envs.render()[0], float(returns[0]))
            ended = live & (term | trunc)
            truncated |= ended & trunc & ~term
            done |= ended
    return [
        {"score": float(returns[i]), "length": int(lengths[i]), "truncated": bool(truncated[i])}
        for i in range(num_envs)
    ]


def evaluate(args: EvalArgs) -> dict[str, Any]:
    t0 = time.monotonic()
    model = load_model(args.model)
    if args.game is not None and args.game != model.game:
        raise EvalError(
            f"atari-eval: model {args.model} is a {model.game} model, not {args.game}; "
            "give that game's model",
            ExitCode.BAD_ARGS,
        )
    check_game(model.game)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    rng = np.random.default_rng(args.seed)
    episodes: list[dict[str, Any]] = []
    video: dict[str, Any] | None = None
    q = None
    if args.video is not None:
        from trainer.video import VideoWriter

        envs = make_eval_envs(model.game, 1, args.seed, args.threads, render=True)
        q = build_network(model, envs, device)
        with VideoWriter(args.video, title=f"{model.game} {model.kind} {model.sha256[:12]}") as vw:
            episodes += play(q, envs, 1, args.epsilon, rng, device, vw.add)
            vw.comment = f"{model.game} score {episodes[0]['score']:g}; model {model.sha256}"
        envs.close()
        video = {"path": str(args.video), **vw.info()}
    while len(episodes) < args.episodes:
        k = min(args.max_envs, args.episodes - len(episodes))
        envs = make_eval_envs(model.game, k, args.seed + len(episodes), args.threads)
        if q is None:
            q = build_network(model, envs, device)
        episodes += play(q, envs, k, args.epsilon, rng, device)
        envs.close()
    scores = [e["score"] for e in episodes]
    wall = time.monotonic() - t0
    return {
        "game": model.game,
        "model": {
            "path": str(model.path),
            "sha256": model.sha256,
            "kind": model.kind,
            "episode": model.episode,
            "train_avg100": model.avg100,
        },
        "episodes": len(episodes),
        "seed": args.seed,
        "device": str(device),
        "threads": args.threads,
        "protocol": protocol(model.game, args.epsilon),
        "scores": scores,
        "lengths": [e["length"] for e in episodes],
        "truncated": sum(e["truncated"] for e in episodes),
        "mean": statistics.fmean(scores),
        "median": statistics.median(scores),
        "std": statistics.pstdev(scores),
        "min": min(scores),
        "max": max(scores),
        "wall_s": wall,
        "video": video,
    }


def protocol(game: str, epsilon: float) -> dict[str, Any]:
    if game in CLASSIC_TASKS:
        return {"epsilon": epsilon, "episode": "natural end (500 steps at most)"}
    return {**PROTOCOL, "epsilon": epsilon}


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        if args.nice:
            os.nice(args.nice)  # an evaluation yields the CPU to the trainers
        result = evaluate(args)
    except EvalError as exc:
        print(exc, file=sys.stderr)
        return exc.code
    print(json.dumps(result))
    return ExitCode.OK


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
