"""Fixtures of the atarictl tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.state import populate_state


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return populate_state(tmp_path / "state")


@pytest.fixture(scope="session")
def cartpole_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONE CartPole run trained to its target (avg100 >= 475) per test session, shared by every
    test that needs a good model (the eval tests, the daemon-run evals). Returns the run dir;
    tests copy from it and never write into it."""
    from tests.atarictl.test_eval import CARTPOLE, trainer

    run = tmp_path_factory.mktemp("cartpole-model") / "CartPole-v1"
    trainer([*CARTPOLE, "--seed", "1", "--run-dir", str(run)], timeout=840)
    return run
