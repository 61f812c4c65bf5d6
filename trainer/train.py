"""The training loop: Double DQN over vectorized envpool environments, top to bottom."""

from __future__ import annotations

import copy
import logging
import time
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from trainer import checkpoint
from trainer.args import Args, resume_config
from trainer.contract import ExitCode
from trainer.envs import EpisodeTracker, env_spec, make_envs
from trainer.network import make_qnetwork
from trainer.progress import EpisodeStats
from trainer.replay import Replay, capacity_for
from trainer.rundir import RunFiles
from trainer.signals import StopFlag

log = logging.getLogger("trainer")


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def now(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> float:
        return time.time()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def epsilon(args: Args, env_steps: int) -> float:
    frac = min(1.0, env_steps / args.eps_decay_steps)
    return args.eps_start + frac * (args.eps_end - args.eps_start)


def act(
    q: torch.nn.Module,
    obs: np.ndarray,
    eps: float,
    rng: np.random.Generator,
    n_actions: int,
    device: torch.device,
) -> np.ndarray:
    n = obs.shape[0]
    explore = rng.random(n) < eps
    actions = rng.integers(0, n_actions, size=n).astype(np.int32)
    if not explore.all():
        with torch.no_grad():
            greedy = q(torch.as_tensor(obs, device=device)).argmax(1).cpu().numpy()
        actions = np.where(explore, actions, greedy).astype(np.int32)
    return actions


def learn(
    args: Args,
    q: torch.nn.Module,
    target: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batch: dict[str, np.ndarray],
    device: torch.device,
) -> float:
    obs = torch.as_tensor(batch["obs"], device=device)
    next_obs = torch.as_tensor(batch["next_obs"], device=device)
    action = torch.as_tensor(batch["action"], device=device)
    ret = torch.as_tensor(batch["return"], device=device)
    discount = torch.as_tensor(batch["discount"], device=device)
    with torch.no_grad():
        # Double DQN: the online net picks the next action, the target net values it.
        next_a = q(next_obs).argmax(1, keepdim=True)
        y = ret + discount * target(next_obs).gather(1, next_a).squeeze(1)
    q_sa = q(obs).gather(1, action.unsqueeze(1)).squeeze(1)
    loss = F.smooth_l1_loss(q_sa, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(q.parameters(), args.max_grad_norm)
    opt.step()
    return float(loss.detach())


def main(
    args: Args,
    clock: Clock | None = None,
    stop: StopFlag | None = None,
    given: frozenset[str] | None = None,
) -> int:
    """One run, with the run dir locked from start to exit. ``given``: the flags given on the
    command line (a resume takes the others from the checkpoint); None means all of them."""
    # The CLI installs the flag before the heavy imports; a direct caller gets one here.
    stop = stop or StopFlag().install()
    with RunFiles.locked(args.run_dir) as files:
        return train(args, files, clock or SystemClock(), stop, given)


def train(
    args: Args, files: RunFiles, clock: Clock, stop: StopFlag, given: frozenset[str] | None
) -> int:
    try:
        loaded = checkpoint.load_newest(files.ckpt_dir)
    except checkpoint.NoValidCheckpoint as exc:
        if not args.allow_fresh:
            raise
        log.warning("--allow-fresh: starting from scratch; %s", exc)
        loaded = None
    if loaded is not None:
        saved = loaded[0].get("config")
        args = resume_config(args, saved if isinstance(saved, dict) else {}, given, args.run_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    stats = EpisodeStats()
    env_steps = updates = last_sync = 0
    credit = 0.0
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)

    probe = make_envs(args, num_envs=1)
    spec = env_spec(probe)
    probe.close()
    capacity = capacity_for(args, spec, args.num_envs)
    q = make_qnetwork(spec, args.hidden).to(device)
    target = copy.deepcopy(q)
    opt = torch.optim.Adam(q.parameters(), lr=args.lr, eps=args.adam_eps)
    best_weights: dict[str, torch.Tensor] | None = None
    last_ckpt_time: float | None = None
    if loaded is not None:
        state, path = loaded
        try:
            last_ckpt_time = state["time"]
            q.load_state_dict(state["q"])
            target.load_state_dict(state["target"])
            opt.load_state_dict(state["optim"])
            c = state["counters"]
            env_steps, updates, last_sync = c["env_steps"], c["updates"], c["last_sync"]
            stats.load(state["stats"])
            rng.bit_generator.state = state["rng"]["numpy"]
            torch.set_rng_state(state["rng"]["torch"])
            best_weights = state.get("best_weights")
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            # Intact but not a state this trainer can continue from: never a silent fresh start.
            raise checkpoint.unloadable(path, exc) from exc
        for group in opt.param_groups:  # the command line may change the rate on resume
            group["lr"] = args.lr
        log.info(
            "resumed from %s: episodes=%d env_steps=%d updates=%d epsilon=%.4f",
            path.name,
            stats.episodes,
            env_steps,
            updates,
            epsilon(args, env_steps),
        )
    # Fresh env seeds on every resume, so a restarted run does not replay the same episodes.
    envs = make_envs(args, seed=(args.seed * 1_000_003 + env_steps) % 2**31)
    replay = Replay(spec, args.num_envs, capacity, args.n_step, args.gamma)
    tracker = EpisodeTracker(args.num_envs)
    n = args.num_envs
    best_needs = min(100, args.episodes)
    # best.pt is exported after the checkpoint rename: a kill in between, or a failed export,
    # leaves it older than the restored best_weights. Re-export once on the first checkpoint.
    best_written = False
    ckpt_failed = False
    learn_t0: float | None = None
    learn_steps0 = env_steps
    learn_t1: float | None = None  # the loop's end: the final checkpoint is not throughput

    def progress(status: str) -> None:
        try:
            files.write_progress(
                {
                    "game": args.game,
                    "status": status,
                    "episodes": stats.episodes,
                    "target_episodes": args.episodes,
                    "env_steps": env_steps,
                    "updates": updates,
                    "episodes_per_hour": round(stats.episodes_per_hour(), 2),
                    "best_return": stats.best,
                    "avg100": stats.avg100,
                    "epsilon": epsilon(args, env_steps),
                    "last_checkpoint_time": last_ckpt_time,
                    "num_envs": n,
                    "batch_size": args.batch_size,
                    "device": str(device),
                    "replay_size": len(replay),
                    "learning_env_steps_per_sec": learn_rate(),
                }
            )
        except OSError as exc:
            log.error("could not write %s: %s", files.progress_path, exc)

    def learn_rate() -> float | None:
        # Throughput while learning, in this process: what the bench reports.
        if learn_t0 is None:
            return None
        dt = (learn_t1 or clock.monotonic()) - learn_t0
        return round((env_steps - learn_steps0) / dt, 1) if dt > 0 else None

    def save_checkpoint() -> bool:
        nonlocal last_ckpt_time, best_written
        state = {
            "version": 1,
            "config": args.to_dict(),
            "q": q.state_dict(),
            "target": target.state_dict(),
            "optim": opt.state_dict(),
            "counters": {"env_steps": env_steps, "updates": updates, "last_sync": last_sync},
            "stats": stats.state(),
            "epsilon": epsilon(args, env_steps),
            "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
            "best_weights": best_weights,
            "time": clock.now(),
        }
        t0 = clock.monotonic()
        try:
            path = checkpoint.save(files.ckpt_dir, state, args.keep_checkpoints)
        except OSError as exc:
            # Disk full and friends: the previous checkpoint is intact; keep training.
            log.error("checkpoint failed, previous checkpoint kept: %s", exc)
            return False
        last_ckpt_time = clock.now()
        log.info("checkpoint %s in %.2f s", path.name, clock.monotonic() - t0)
        if best_weights is not None and not best_written:
            try:
                export_best(best_weights, stats.best)
                best_written = True
            except OSError as exc:  # the checkpoint holds best_weights: retried next time
                log.error("could not export %s: %s", files.best_path, exc)
        return True

    def export_best(weights: dict[str, torch.Tensor], score: float | None) -> None:
        checkpoint.write_atomic(
            files.best_path,
            checkpoint.encode(
                {
                    "q": weights,
                    "avg100": score,
                    "episodes": stats.episodes,
                    "env_id": args.env_id,
                    "obs_shape": spec.obs_shape,
                    "num_actions": spec.num_actions,
                    "config": args.to_dict(),
                }
            ),
        )

    progress("starting")
    obs, info = envs.reset()
    replay.start(np.arange(n), obs)
    pseudo = np.zeros(n, dtype=bool)
    learn_min = max(args.learning_starts, args.batch_size)
    learning = False
    t_start = clock.monotonic()
    next_progress = t_start
    next_ckpt = t_start + args.checkpoint_every
    next_log = t_start + 30.0
    steps_at_start = env_steps
    done = False
    env_ids = np.arange(n, dtype=np.int32)
    while True:
        eps = epsilon(args, env_steps)
        actions = act(q, obs, eps, rng, spec.num_actions, device)
        envs.send(actions, env_ids)
        if not args.overlap:
            stepped = envs.recv()
        # With overlap the learner runs while envpool's threads step the environments.
        # A buffer whose per-episode slots keep it below learn_min starts once it is full.
        if not learning and (len(replay) >= learn_min or replay.full):
            learning = True
            learn_t0, learn_steps0 = clock.monotonic(), env_steps
            log.info(
                "learning starts: %d transitions in the replay buffer%s",
                len(replay),
                "" if len(replay) >= learn_min else " (full; below --learning-starts)",
            )
        if learning:
            credit += n * args.replay_ratio / args.batch_size
            while credit >= 1.0 and not stop.set:
                learn(args, q, target, opt, replay.sample(args.batch_size, rng), device)
                updates += 1
                credit -= 1.0
        if args.overlap:
            stepped = envs.recv()
        next_obs, reward, term, trunc, info = stepped
        order = np.argsort(info["env_id"])
        if not (order == env_ids).all():
            next_obs, reward = next_obs[order], reward[order]
            term, trunc = term[order], trunc[order]
            info = {k: v[order] for k, v in info.items() if isinstance(v, np.ndarray)}
        replay.add(actions, reward, term, trunc, next_obs, pseudo)
        finished = tracker.step(reward, term, trunc, info)
        pseudo = np.logical_or(term, trunc)
        obs = next_obs
        env_steps += n
        if env_steps - last_sync >= args.target_update:
            target.load_state_dict(q.state_dict())
            last_sync = env_steps
        now = clock.now()
        for ret, length in finished:
            if stats.add(ret, now, best_needs):
                best_weights = {k: v.detach().cpu().clone() for k, v in q.state_dict().items()}
                best_written = False
            files.append_episode(
                {
                    "t": now,
                    "episode": stats.episodes,
                    "return": ret,
                    "length": length * (4 if args.is_atari else 1),
                    "env_steps": env_steps,
                }
            )
        if stats.episodes >= args.episodes:
            done = True
        if args.stop_avg100 is not None and len(stats.window) >= best_needs:
            done = done or (stats.avg100 or 0.0) >= args.stop_avg100
        if args.max_env_steps is not None and env_steps >= args.max_env_steps:
            log.info("--max-env-steps %d reached", args.max_env_steps)
            break
        if done or stop.set:
            break
        mono = clock.monotonic()
        if args.max_seconds is not None and mono - t_start >= args.max_seconds:
            log.info("--max-seconds %s reached", args.max_seconds)
            break
        if mono >= next_ckpt:
            ckpt_failed = not save_checkpoint()
            next_ckpt = clock.monotonic() + args.checkpoint_every
        if mono >= next_progress:
            progress("running")
            next_progress = mono + args.progress_every
        if mono >= next_log:
            sps = (env_steps - steps_at_start) / max(1e-9, mono - t_start)
            log.info(
                "env_steps=%d updates=%d episodes=%d avg100=%s eps=%.3f steps/s=%.0f",
                env_steps,
                updates,
                stats.episodes,
                None if stats.avg100 is None else round(stats.avg100, 2),
                eps,
                sps,
            )
            next_log = mono + 30.0

    learn_t1 = clock.monotonic()
    if stop.set:
        log.info("signal %s: checkpointing and stopping", stop.signals[0])
    envs.close()
    ok = save_checkpoint()
    if done:
        # The target is reached: make sure a best export exists even with a short run.
        try:
            export_best(best_weights or q.state_dict(), stats.best)
        except OSError as exc:
            log.error("could not export %s: %s", files.best_path, exc)
            ok = False
    progress("done" if done else "stopped")
    if ckpt_failed and not ok:
        log.error("the final checkpoint could not be written")
    return ExitCode.OK if ok else ExitCode.FAILURE
