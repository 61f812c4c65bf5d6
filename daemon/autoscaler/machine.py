"""The level state machine: a ``transitions.Machine`` over the profile's ladder plus fallback.

The transition table is built from data in one place (``transition_table``); guards delegate to
the pure functions in ``policy``, fed the facts and time passed with each trigger. The machine
decides nothing on its own: the autoscaler fires one trigger at a time and persists the result.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from transitions import EventData, Machine

from daemon.autoscaler import policy as guards
from daemon.autoscaler.states import FALLBACK, level_of, state_names
from daemon.config import AutoscalerPolicy

# Automatic moves, tried in this order by one stability check; the first that fires ends the check.
AUTOMATIC_TRIGGERS = ("fall_back", "shed", "recover", "promote")


def transition_table(ladder: Sequence[str]) -> list[dict[str, Any]]:
    """Every edge of the machine. Conditions/unless name guard methods of ``LevelModel``."""
    rungs = tuple(ladder)
    table: list[dict[str, Any]] = [
        {
            "trigger": "promote",
            "source": lower,
            "dest": upper,
            "conditions": ["has_been_stable"],
            "unless": ["is_pinned", "is_unstable", "is_promotion_blocked"],
        }
        for lower, upper in itertools.pairwise(rungs)
    ]
    # Sustained pressure (autoscaler/shedding.py) steps down one rung at once; the bottom rung
    # has no shed edge: there the autoscaler pauses the newest game instead.
    table.extend(
        {
            "trigger": "shed",
            "source": upper,
            "dest": lower,
            "conditions": ["is_under_pressure"],
            "unless": ["is_pinned"],
        }
        for lower, upper in itertools.pairwise(rungs)
    )
    table.append(
        {
            "trigger": "fall_back",
            "source": list(rungs),
            "dest": FALLBACK,
            "conditions": ["is_unstable"],
            "unless": ["is_pinned"],
        }
    )
    table.append(
        {
            "trigger": "recover",
            "source": FALLBACK,
            "dest": rungs[0],
            "conditions": ["has_cooldown_elapsed"],
            "unless": ["is_pinned"],
        }
    )
    # The operator may pin any state from any state; the requested state picks the edge.
    table.extend(
        {"trigger": "pin", "source": "*", "dest": state, "conditions": ["is_pin_target"]}
        for state in state_names(rungs)
    )
    return table


class LevelModel:
    """The plain object the machine drives. Guards read ``facts``/``now`` from the trigger call."""

    state: str  # set by transitions

    def __init__(self, policy: AutoscalerPolicy) -> None:
        self.policy = policy
        self.level: str | None = None  # armed by ``arm``; None until the machine is armed

    # -- guards (conditions receive the EventData because the machine uses send_event=True) --
    def is_pinned(self, event: EventData) -> bool:
        return guards.is_pinned(event.kwargs["facts"])

    def is_unstable(self, event: EventData) -> bool:
        return guards.is_unstable(event.kwargs["facts"], self.policy, event.kwargs["now"])

    def has_been_stable(self, event: EventData) -> bool:
        return guards.has_been_stable(event.kwargs["facts"], self.policy, event.kwargs["now"])

    def has_cooldown_elapsed(self, event: EventData) -> bool:
        return guards.has_cooldown_elapsed(event.kwargs["facts"], self.policy, event.kwargs["now"])

    def is_under_pressure(self, event: EventData) -> bool:
        watch, facts = event.kwargs.get("watch"), event.kwargs["facts"]
        # Only the level's own readings: a shed or promotion starts the count again.
        return watch is not None and bool(watch.pressure(event.kwargs["now"], facts.entered_at))

    def is_promotion_blocked(self, event: EventData) -> bool:
        """A recent shed's cooldown, or the guard: the next rung's projected footprint does not
        fit (autoscaler/shedding.py)."""
        watch = event.kwargs.get("watch")
        assert event.transition is not None
        return watch is not None and watch.blocks_promotion(
            event.transition.source, event.transition.dest, event.kwargs["now"]
        )

    def is_pin_target(self, event: EventData) -> bool:
        assert event.transition is not None
        return bool(event.kwargs["target"] == event.transition.dest)

    # -- side effects --
    def arm(self, state: str) -> None:
        """Entry side effect: switch the level the daemon runs. Called by the machine on every
        entry and explicitly after a restore, since transitions does not enter the initial state."""
        self.level = level_of(state, self.policy.fallback_level)

    def on_enter_any(self, event: EventData) -> None:
        self.arm(event.state.name)


def build_machine(
    model: LevelModel,
    initial: str,
    machine_cls: type[Machine] = Machine,
    **extra: Any,
) -> Machine:
    """The one place the machine is assembled (the diagram uses it too, with GraphMachine)."""
    ladder = model.policy.ladder
    states = state_names(ladder)
    if initial not in states:
        raise ValueError(f"state {initial!r} is not one of {list(states)}")
    machine = machine_cls(
        model=model,
        states=[{"name": s, "on_enter": ["on_enter_any"]} for s in states],
        transitions=transition_table(ladder),
        initial=initial,
        auto_transitions=False,
        send_event=True,
        model_attribute="state",
        **extra,
    )
    return machine
