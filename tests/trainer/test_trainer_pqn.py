"""PQN (trainer/pqn.py): the Q(lambda) targets by hand, the rollout's memory is the validator's
number, and the run-dir contract holds for the real trainer: SIGTERM -> checkpoint -> exit 0, an
exact resume at another num_envs, a best.pt that evaluation loads, and a refused algo switch."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_testlib import kill_group, read_progress, run, start, wait_for

from trainer import checkpoint, contract
from trainer.envs import EnvSpec
from trainer.pqn import q_lambda_returns, rollout_buffers

TINY = ["--game", "CartPole-v1", "--algo", "pqn", "--hidden", "32", "--threads", "1",
        "--env-threads", "1", "--progress-every", "0.2"]  # fmt: skip


def test_q_lambda_returns_by_hand() -> None:
    # Three envs over three steps, gamma 0.9, lambda 0.5: env 0 never ends, env 1 terminates at
    # step 1 (step 2 is envpool's reset step), env 2 is truncated at step 0.
    reward = torch.tensor([[1.0, 1.0, 3.0], [1.0, 2.0, 0.0], [1.0, 0.0, 1.0]])
    values = torch.tensor([[10.0, 5.0, 1.0], [20.0, 6.0, 2.0], [30.0, 7.0, 3.0]])
    term = torch.tensor([[False, False, False], [False, True, False], [False, False, False]])
    trunc = torch.tensor([[False, False, True], [False, False, False], [False, False, False]])
    next_value = torch.tensor([40.0, 8.0, 4.0])
    ret = q_lambda_returns(reward, term, trunc, values, next_value, 0.9, 0.5)
    # env 0: 37 = 1 + .9 * 40; 31.15 = 1 + .9 * (.5 * 37 + .5 * 30); 24.0175 likewise.
    assert ret[:, 0].tolist() == pytest.approx([24.0175, 31.15, 37.0])
    # env 1: terminated at step 1 -> its own reward only; step 0 mixes it with Q(obs 1).
    assert ret[1, 1].item() == pytest.approx(2.0)
    assert ret[0, 1].item() == pytest.approx(1 + 0.9 * (0.5 * 2.0 + 0.5 * 6.0))
    # env 2: truncated at step 0 -> bootstrap from the final observation's value, no lambda.
    assert ret[0, 2].item() == pytest.approx(3 + 0.9 * 2.0)


@pytest.mark.parametrize(("envs", "batch"), [(8, 32), (32, 512), (64, 1024), (256, 2048)])
def test_rollout_memory_is_the_validators_number(envs: int, batch: int) -> None:
    from trainer.scaling import rollout_steps

    spec = EnvSpec((4, 84, 84), np.dtype(np.uint8), 4, 6)
    bufs = rollout_buffers(rollout_steps(envs, batch), envs, spec, torch.device("cpu"))
    allocated = sum(t.numel() * t.element_size() for t in bufs.values())
    assert allocated == contract.learner_memory_bytes("pqn", envs, batch, buffer_gb=7.0)


def test_sigterm_checkpoints_and_resumes_exactly_at_another_num_envs(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    log = tmp_path / "pqn.log"
    proc = start([*TINY, "--episodes", "100000", "--num-envs", "8", "--batch-size", "64",
                  "--checkpoint-every", "600", "--run-dir", str(run_dir)], log)  # fmt: skip
    try:
        wait_for(lambda: (read_progress(run_dir) or {}).get("updates", 0) > 20, proc, 120,
                 "20 updates")  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-2000:]
    finally:
        kill_group(proc)
    stopped = read_progress(run_dir)
    assert stopped is not None and stopped["status"] == "stopped"
    state, _ = checkpoint.load_newest(run_dir / "checkpoints")
    assert state["counters"]["env_steps"] == stopped["env_steps"]
    assert state["config"]["algo"] == "pqn"
    assert any(k.endswith("net.1.weight") for k in state["q"])  # the LayerNorm is there
    assert "rollout_steps" in state["scaled"] and "lr" in state["scaled"]

    # Resume with 16 envs and no --algo: the run's algo is restored, the rule gives the new
    # shape's rollout, and the counters go on from the checkpoint's.
    more = stopped["env_steps"] + 3000
    resumed = run([a for a in TINY if a not in ("--algo", "pqn")] + [
        "--episodes", "100000", "--num-envs", "16", "--batch-size", "64",
        "--max-env-steps", str(more), "--run-dir", str(run_dir)])  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resume: --algo pqn restored from the checkpoint" in resumed.stderr
    assert "pqn: 16 envs x 8 rollout steps" in resumed.stderr
    after = read_progress(run_dir)
    assert after is not None and after["num_envs"] == 16
    assert after["env_steps"] >= more and after["episodes"] >= stopped["episodes"]
    assert after["updates"] > stopped["updates"]


def test_done_run_exports_a_best_model_that_evaluation_loads(tmp_path: Path) -> None:
    from trainer.evaluate import build_network, load_model, make_eval_envs

    run_dir = tmp_path / "run"
    done = run([*TINY, "--episodes", "30", "--num-envs", "4", "--batch-size", "32",
                "--run-dir", str(run_dir)])  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (read_progress(run_dir) or {}).get("status") == "done"
    model = load_model(run_dir / "best.pt")
    assert model.algo == "pqn"
    envs = make_eval_envs("CartPole-v1", 1, seed=0, threads=1)
    q = build_network(model, envs, torch.device("cpu"))
    obs, _ = envs.reset()
    assert q(torch.as_tensor(obs)).shape == (1, 2)


def test_switching_a_run_to_another_algo_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run([*TINY, "--episodes", "5", "--num-envs", "4", "--batch-size", "32",
                 "--run-dir", str(run_dir)])  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    dqn = [a for a in TINY if a not in ("--algo", "pqn")]
    again = run([*dqn, "--algo", "dqn", "--episodes", "10", "--num-envs", "4", "--batch-size",
                 "32", "--buffer-gb", "0.001", "--run-dir", str(run_dir)])  # fmt: skip
    assert again.returncode == contract.ExitCode.BAD_ARGS
    (line,) = [ln for ln in again.stderr.splitlines() if "--algo" in ln]
    assert "--algo dqn conflicts with --algo pqn" in line and str(run_dir) in line
