"""Published reference scores and the human-normalized score (stdlib only).

Shared by ``atarictl eval`` and the daemon's own evals and reports, so one table and one
formula serve both.
"""

from __future__ import annotations

# Random and human reference scores of the ten games of profiles/gpu-box.yaml, from Mnih et al.
# 2015, "Human-level control through deep reinforcement learning", Nature 518, Extended Data
# Table 2 (random: uniform random actions; human: a professional tester, 2 h practice, measured
# with the same 30 no-op / 5 min protocol). Human-normalized % = 100 (agent - random) /
# (human - random), the paper's definition.
REFERENCE = "Mnih et al. 2015 (Nature 518:529), Extended Data Table 2"
REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "Asteroids": (719.1, 13157.0),
    "BeamRider": (363.9, 5775.0),
    "Boxing": (0.1, 4.3),
    "Breakout": (1.7, 31.8),
    "Enduro": (0.0, 309.6),
    "Freeway": (0.0, 29.6),
    "MsPacman": (307.3, 15693.0),
    "Pong": (-20.7, 9.3),
    "Seaquest": (68.4, 20182.0),
    "SpaceInvaders": (148.0, 1652.0),
}


def human_normalized(game: str, score: float) -> float | None:
    """Percent of the way from random (0 %) to human (100 %) play; None without a reference."""
    ref = REFERENCE_SCORES.get(game)
    if ref is None:
        return None
    random_, human = ref
    return 100.0 * (score - random_) / (human - random_)


def reference(game: str) -> dict[str, object] | None:
    ref = REFERENCE_SCORES.get(game)
    if ref is None:
        return None
    return {"random": ref[0], "human": ref[1], "source": REFERENCE}
