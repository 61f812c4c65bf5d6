"""The training loop: Double DQN over vectorized envpool environments, top to bottom."""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
import torch.nn.functional as F

from trainer import runtime
from trainer.args import Args
from trainer.envs import EpisodeTracker, env_spec, make_envs
from trainer.network import make_qnetwork
from trainer.replay import Replay, capacity_for
from trainer.rundir import RunFiles
from trainer.runtime import Clock, SystemClock, epsilon, resolve_device
from trainer.signals import StopFlag

__all__ = ["Clock", "SystemClock", "act", "epsilon", "learn", "main", "resolve_device"]

log = logging.getLogger("trainer")


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
) -> dict[str, torch.Tensor]:
    """One update; returns its loss, mean Q of the batch and gradient norm as device tensors
    (read only when the curves sample them: no device sync per update)."""
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
    grad_norm = torch.nn.utils.clip_grad_norm_(q.parameters(), args.max_grad_norm)
    opt.step()
    return {"loss": loss.detach(), "q_mean": q_sa.detach().mean(), "grad_norm": grad_norm}


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
        begin = runtime.start(args, files, given)
        if begin.args.algo == "pqn":
            from trainer import pqn

            return pqn.train(begin, files, clock or SystemClock(), stop)
        return train(begin, files, clock or SystemClock(), stop)


def train(begin: runtime.Start, files: RunFiles, clock: Clock, stop: StopFlag) -> int:
    """Double DQN, top to bottom: envs, networks, resume, then one loop of act / learn / record."""
    args = begin.args
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    env_steps = updates = last_sync = 0
    credit = 0.0

    probe = make_envs(args, num_envs=1)
    spec = env_spec(probe)
    probe.close()
    capacity = capacity_for(args, spec, args.num_envs)
    run = runtime.Run(begin, files, clock, spec, device)  # seeds torch before the networks
    rng = run.rng
    q = make_qnetwork(spec, args.hidden).to(device)
    target = copy.deepcopy(q)
    opt = torch.optim.Adam(q.parameters(), lr=args.lr, eps=args.adam_eps)

    def load(state: dict) -> dict[str, int]:
        q.load_state_dict(state["q"])
        target.load_state_dict(state["target"])
        opt.load_state_dict(state["optim"])
        c = state["counters"]
        return {"env_steps": c["env_steps"], "updates": c["updates"], "last_sync": c["last_sync"]}

    resumed = run.restore(load)
    if resumed is not None:
        env_steps, updates, last_sync = (resumed[k] for k in ("env_steps", "updates", "last_sync"))
        for group in opt.param_groups:  # the command line may change the rate on resume
            group["lr"] = args.lr
    envs = make_envs(args, seed=run.env_seed(env_steps))
    replay = Replay(spec, args.num_envs, capacity, args.n_step, args.gamma)
    tracker = EpisodeTracker(args.num_envs)
    n = args.num_envs
    learn_t0: float | None = None
    learn_steps0 = env_steps
    learn_t1: float | None = None  # the loop's end: the final checkpoint is not throughput

    def counters() -> dict[str, int]:
        return {"env_steps": env_steps, "updates": updates, "last_sync": last_sync}

    def nets() -> dict[str, object]:
        return {"q": q.state_dict(), "target": target.state_dict(), "optim": opt.state_dict()}

    def learn_rate() -> float | None:
        # Throughput while learning, in this process: what the bench reports.
        if learn_t0 is None:
            return None
        dt = (learn_t1 or clock.monotonic()) - learn_t0
        return round((env_steps - learn_steps0) / dt, 1) if dt > 0 else None

    run.progress("starting", counters(), 0, None)
    obs, info = envs.reset()
    replay.start(np.arange(n), obs)
    pseudo = np.zeros(n, dtype=bool)
    learn_min = max(args.learning_starts, args.batch_size)
    learning = False
    t_start = run.t_start = clock.monotonic()
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
                stats = learn(args, q, target, opt, replay.sample(args.batch_size, rng), device)
                updates += 1
                if run.curves.learner_due():
                    run.curves.learner(updates, stats, eps, opt.param_groups[0]["lr"])
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
        run.episodes(finished, env_steps, q)
        done = run.is_done()
        if done or stop.set or run.is_past_limit(env_steps):
            break
        mono = clock.monotonic()
        if mono >= next_ckpt:
            run.periodic_save(nets(), counters())
            next_ckpt = clock.monotonic() + args.checkpoint_every
        if mono >= next_progress:
            run.progress("running", counters(), len(replay), learn_rate(),
                         len(replay) / max(1, capacity))
            next_progress = mono + args.progress_every
        if mono >= next_log:
            run.log_rate(counters(), steps_at_start, eps)
            next_log = mono + 30.0

    learn_t1 = clock.monotonic()
    envs.close()
    return run.finish(stop, done, q, nets(), counters(), len(replay), learn_rate())
