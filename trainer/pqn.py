"""PQN: online Q(lambda) over the vectorized envs, top to bottom. No replay buffer, no target
network: a LayerNorm Q-network, epsilon-greedy rollouts of ``rollout_steps`` per env, Q(lambda)
returns computed backward over each rollout, then ``replay_ratio`` passes of minibatches over it.

Gallici et al., "Simplifying Deep Temporal Difference Learning" (ICLR 2025). The run-dir
contract is DQN's: atomic checkpoints (taken between rollouts, where nothing is half-collected),
exact resume (any num_envs: no state has the envs' shape), SIGTERM -> checkpoint -> exit 0,
progress.json, episodes.jsonl, best.pt and the exit codes. The rollout lives on the torch device
and the update never copies a batch through the host; only the N actions go to envpool.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from trainer import runtime
from trainer.args import Args
from trainer.envs import EnvSpec, EpisodeTracker, env_spec, make_envs
from trainer.network import make_qnetwork
from trainer.rundir import RunFiles
from trainer.runtime import Clock, epsilon, resolve_device
from trainer.scaling import rollout_steps
from trainer.signals import StopFlag

log = logging.getLogger("trainer")

LR_FLOOR = 0.1


def q_lambda_returns(
    reward: torch.Tensor,
    term: torch.Tensor,
    trunc: torch.Tensor,
    values: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Q(lambda) targets for a T x N rollout. ``values[t]`` is max_a Q(obs[t]) at acting time,
    ``next_value`` the same for the observation after the last step. An episode that ends at
    step t is terminated (no bootstrap) or truncated (bootstrap from the final observation, which
    envpool returns at step t and resets on the next, ignored, step). The returns of those reset
    steps are garbage and masked out by the caller."""
    steps = reward.shape[0]
    ret = torch.empty_like(reward)
    g = next_value
    for t in reversed(range(steps)):
        v_next = values[t + 1] if t + 1 < steps else next_value
        cont = torch.where(trunc[t], v_next, lam * g + (1.0 - lam) * v_next)
        ret[t] = reward[t] + gamma * torch.where(term[t], torch.zeros_like(cont), cont)
        g = ret[t]
    return ret


def learning_rate(args: Args, env_steps: int) -> float:
    """Linear decay to LR_FLOOR x lr over --lr-decay-steps, then held: without replay, the data
    is only ever the current policy's, and a constant rate lets a solved task drift away again
    (measured on CartPole: docs/trainer.md)."""
    if not args.lr_decay_steps:
        return args.lr
    frac = min(1.0, env_steps / args.lr_decay_steps)
    return args.lr * (1.0 - (1.0 - LR_FLOOR) * frac)


def rollout_buffers(
    steps: int, n: int, spec: EnvSpec, device: torch.device
) -> dict[str, torch.Tensor]:
    """The rollout, on the device; its size is contract.learner_memory_bytes (the validator's)."""
    obs_dtype = torch.uint8 if spec.obs_dtype == np.uint8 else torch.float32
    return {
        "obs": torch.zeros((steps, n, *spec.obs_shape), dtype=obs_dtype, device=device),
        "action": torch.zeros((steps, n), dtype=torch.long, device=device),
        "reward": torch.zeros((steps, n), dtype=torch.float32, device=device),
        "value": torch.zeros((steps, n), dtype=torch.float32, device=device),
        "term": torch.zeros((steps, n), dtype=torch.bool, device=device),
        "trunc": torch.zeros((steps, n), dtype=torch.bool, device=device),
        "reset": torch.zeros((steps, n), dtype=torch.bool, device=device),
    }


def learn(
    args: Args,
    q: torch.nn.Module,
    opt: torch.optim.Optimizer,
    obs: torch.Tensor,
    action: torch.Tensor,
    target: torch.Tensor,
    passes: float,
) -> tuple[int, dict[str, torch.Tensor]]:
    """``passes`` shuffled passes of minibatches over the (flattened, valid) rollout samples;
    returns the number of updates and the last one's loss, mean Q and gradient norm."""
    n = obs.shape[0]
    batch = min(args.batch_size, n)
    count = max(1, round(passes * n / batch))
    perm = torch.randperm(n).to(obs.device)
    pos = 0
    for _ in range(count):
        if pos + batch > n:
            perm, pos = torch.randperm(n).to(obs.device), 0
        idx = perm[pos : pos + batch]
        pos += batch
        q_sa = q(obs[idx]).gather(1, action[idx].unsqueeze(1)).squeeze(1)
        loss = F.mse_loss(q_sa, target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(q.parameters(), args.max_grad_norm)
        opt.step()
    stats = {"loss": loss.detach(), "q_mean": q_sa.detach().mean(), "grad_norm": grad_norm}
    return count, stats


def train(begin: runtime.Start, files: RunFiles, clock: Clock, stop: StopFlag) -> int:
    """PQN, top to bottom: envs, network, resume, then rollouts, each followed by its update."""
    args = begin.args
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    env_steps = updates = 0

    probe = make_envs(args, num_envs=1)
    spec = env_spec(probe)
    probe.close()
    run = runtime.Run(begin, files, clock, spec, device)  # seeds torch before the network
    rng = run.rng
    q = make_qnetwork(spec, args.hidden, layer_norm=True).to(device)
    opt = torch.optim.Adam(q.parameters(), lr=args.lr, eps=args.adam_eps)

    def load(state: dict) -> dict[str, int]:
        q.load_state_dict(state["q"])
        opt.load_state_dict(state["optim"])
        return {"env_steps": state["counters"]["env_steps"],
                "updates": state["counters"]["updates"]}  # fmt: skip

    resumed = run.restore(load)
    if resumed is not None:
        env_steps, updates = resumed["env_steps"], resumed["updates"]
    envs = make_envs(args, seed=run.env_seed(env_steps))
    tracker = EpisodeTracker(args.num_envs)
    n = args.num_envs
    steps = args.rollout_steps or rollout_steps(n, args.batch_size)
    buf = rollout_buffers(steps, n, spec, device)
    log.info("pqn: %d envs x %d rollout steps, minibatch %d, %.3g passes, lambda %.3g",
             n, steps, args.batch_size, args.replay_ratio, args.q_lambda)  # fmt: skip
    learn_t0 = clock.monotonic()
    learn_steps0 = env_steps
    learn_t1: float | None = None

    def counters() -> dict[str, int]:
        return {"env_steps": env_steps, "updates": updates}

    def nets() -> dict[str, object]:
        return {"q": q.state_dict(), "optim": opt.state_dict()}

    def learn_rate() -> float | None:
        dt = (learn_t1 or clock.monotonic()) - learn_t0
        return round((env_steps - learn_steps0) / dt, 1) if dt > 0 else None

    run.progress("starting", counters(), 0, None)
    obs, _ = envs.reset()
    reset = np.zeros(n, dtype=bool)  # this env's next step only delivers the reset observation
    env_ids = np.arange(n, dtype=np.int32)
    t_start = run.t_start = clock.monotonic()
    next_progress = t_start
    next_ckpt = t_start + args.checkpoint_every
    next_log = t_start + 30.0
    steps_at_start = env_steps
    done = limit = False
    while True:
        # ---- rollout: act epsilon-greedily for `steps` steps of every env
        filled = 0
        for t in range(steps):
            o = torch.as_tensor(obs, device=device)
            with torch.no_grad():
                value, greedy = q(o).max(1)
            explore = rng.random(n) < epsilon(args, env_steps)
            actions = np.where(
                explore, rng.integers(0, spec.num_actions, size=n), greedy.cpu().numpy()
            ).astype(np.int32)
            envs.send(actions, env_ids)
            next_obs, reward, term, trunc, info = envs.recv()
            order = np.argsort(info["env_id"])
            if not (order == env_ids).all():
                next_obs, reward = next_obs[order], reward[order]
                term, trunc = term[order], trunc[order]
                info = {k: v[order] for k, v in info.items() if isinstance(v, np.ndarray)}
            for name, value_t in (("obs", o), ("value", value), ("action", actions),
                                  ("reward", reward), ("term", term), ("trunc", trunc),
                                  ("reset", reset)):  # fmt: skip
                buf[name][t] = torch.as_tensor(value_t, device=device)
            finished = tracker.step(reward, term, trunc, info)
            reset = np.logical_or(term, trunc)
            obs = next_obs
            env_steps += n
            filled = t + 1
            run.episodes(finished, env_steps, q)
            done = run.is_done()
            limit = run.is_past_limit(env_steps)
            mono = clock.monotonic()
            if mono >= next_progress:
                run.progress("running", counters(), 0, learn_rate())
                next_progress = mono + args.progress_every
            if done or limit or stop.set:
                break

        # ---- learn: Q(lambda) targets over what was collected, then minibatch passes.
        # After a stop signal one pass only: the stop bound is one pass over a partial rollout.
        with torch.no_grad():
            next_value = q(torch.as_tensor(obs, device=device)).max(1).values
            target = q_lambda_returns(
                buf["reward"][:filled], buf["term"][:filled], buf["trunc"][:filled],
                buf["value"][:filled], next_value, args.gamma, args.q_lambda,
            )  # fmt: skip
        for group in opt.param_groups:
            group["lr"] = learning_rate(args, env_steps)
        valid = ~buf["reset"][:filled].reshape(-1)
        if bool(valid.any()):
            count, stats = learn(
                args, q, opt,
                buf["obs"][:filled].reshape(-1, *spec.obs_shape)[valid],
                buf["action"][:filled].reshape(-1)[valid],
                target.reshape(-1)[valid],
                1.0 if stop.set else args.replay_ratio,
            )  # fmt: skip
            updates += count
            if run.curves.learner_due():
                run.curves.learner(updates, stats, epsilon(args, env_steps),
                                   opt.param_groups[0]["lr"])  # fmt: skip
        if done or limit or stop.set:
            break
        mono = clock.monotonic()
        if mono >= next_ckpt:
            run.periodic_save(nets(), counters())
            next_ckpt = clock.monotonic() + args.checkpoint_every
        if mono >= next_log:
            run.log_rate(counters(), steps_at_start, epsilon(args, env_steps))
            next_log = mono + 30.0

    learn_t1 = clock.monotonic()
    envs.close()
    return run.finish(stop, done, q, nets(), counters(), 0, learn_rate())
