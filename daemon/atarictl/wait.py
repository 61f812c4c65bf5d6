"""``start|stop|restart --wait``: follow each named game to its next steady state.

A state is *steady* when the game stays in it until something new happens (an operator command,
a level change, a crash, a free slot): RUNNING, STOPPED, DONE, FATAL, BACKOFF and QUEUED.
STARTING (up for less than ``startsecs``) and STOPPING (checkpointing after SIGTERM) are
*transient*: the daemon itself moves a game out of them within ``startsecs`` or ``stop_grace``.
BACKOFF counts as steady because what follows it is the daemon's retry after a delay of up to
``backoff.max``, not the command's effect; QUEUED because a game waits there for a slot of the
level, however long that takes.

The wait reads the daemon's status (the same request as ``atarictl status``) a few times a
second; it never changes anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from daemon.atarictl.client import CtlError

STEADY = frozenset({"RUNNING", "STOPPED", "DONE", "FATAL", "BACKOFF", "QUEUED"})
TRANSIENT = frozenset({"STARTING", "STOPPING"})
# The steady states in which the command did what it was asked (exit 0). QUEUED after a start:
# the game waits for a free slot, which is the daemon's queue working as designed.
WANTED = {
    "start": frozenset({"RUNNING", "QUEUED", "DONE"}),
    "restart": frozenset({"RUNNING", "QUEUED", "DONE"}),
    "stop": frozenset({"STOPPED", "DONE"}),
}
POLL_S = 0.25
DEFAULT_WAIT_S = 120.0


class WaitTimeout(CtlError):
    """A game was still STARTING/STOPPING when ``--wait SECONDS`` ran out."""

    exit_code = 8


@dataclass(frozen=True)
class Reached:
    game: str
    state: str
    after_s: float
    row: dict[str, Any]


def wait_steady(
    games: list[str],
    status: Callable[[], dict[str, Any]],
    timeout: float,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Reached]:
    """Poll ``status()`` until every game in ``games`` is in a steady state; raise WaitTimeout
    naming the games still in transit when ``timeout`` seconds have passed."""
    start = monotonic()
    reached: dict[str, Reached] = {}
    last: dict[str, str] = {}
    while True:
        rows = {g["game"]: g for g in status().get("games", [])}
        now = monotonic()
        for name in games:
            if name in reached:
                continue
            row = rows.get(name)
            if row is None:  # removed by a reload meanwhile: nothing left to wait for
                reached[name] = Reached(name, "REMOVED", now - start, {})
                continue
            last[name] = row["state"]
            if row["state"] in STEADY:
                reached[name] = Reached(name, row["state"], now - start, row)
        if len(reached) == len(games):
            return [reached[n] for n in games]
        if now - start >= timeout:
            pending = ", ".join(f"{n} still {last.get(n, '?')}" for n in games if n not in reached)
            raise WaitTimeout(
                f"--wait {timeout:g}s ran out: {pending}; the daemon goes on with it "
                "(see atarictl status, atarictl tail GAME)",
                "wait_timeout",
            )
        sleep(POLL_S)


def describe(cmd: str, r: Reached) -> str:
    """One line: the state reached, how long it took, and why when it is not what was asked."""
    took = f"after {r.after_s:.1f}s"
    if r.state == "REMOVED":
        return f"{r.game}: removed from the profile by a reload ({took})"
    line = f"{r.game}: {r.state} ({took}"
    if r.state == "RUNNING" and r.row.get("pid"):
        line += f", pid {r.row['pid']}"
    line += ")"
    if r.state not in WANTED[cmd] or r.state in ("QUEUED", "BACKOFF", "FATAL"):
        reason = r.row.get("reason")
        if reason:
            line += f": {reason}"
    return line


def succeeded(cmd: str, reached: list[Reached]) -> bool:
    return all(r.state in WANTED[cmd] for r in reached)


class _Ctl(Protocol):
    json: bool

    def out(self, human: str, data: Any) -> None: ...


class _Status(Protocol):
    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any: ...


def report(
    ctl: _Ctl, client: _Status, cmd: str, result: dict[str, Any], before: dict[str, Any],
    wait_s: float | None,
) -> int:  # fmt: skip
    """Print what ``cmd`` did (the daemon's reply ``result``, ``before`` is the status the
    names were resolved against); with ``wait_s``, follow the games to their next steady state
    first. Returns the exit code."""
    states: dict[str, str] = result.get("games") or {}
    rows = {g["game"]: g for g in before.get("games", [])}
    profile = (before.get("daemon") or {}).get("profile")
    if wait_s is None:
        lines = []
        for game, state in states.items():
            row = {**rows.get(game, {"game": game}), "state": state}
            done = cmd == "start" and state == "DONE"
            lines.append(done_hint(row, profile) if done else f"{game}: {state}")
        ctl.out("\n".join(lines) or f"{cmd}: nothing to do", result)
        return 0
    reached = wait_steady(list(states), lambda: client.call("status", {}), wait_s)
    ok = succeeded(cmd, reached)
    lines = []
    for r in reached:
        done = cmd == "start" and r.state == "DONE" and states.get(r.game) == "DONE"
        lines.append(done_hint(r.row, profile) if done else describe(cmd, r))
    data = {**result, "waited": [
        {"game": r.game, "state": r.state, "after_s": round(r.after_s, 2),
         "reason": r.row.get("reason"), "pid": r.row.get("pid")} for r in reached
    ], "ok": ok}  # fmt: skip
    ctl.out("\n".join(lines) or f"{cmd}: nothing to do", data)
    return 0 if ok else 1


def attach_wait_value(argv: list[str], default: float = DEFAULT_WAIT_S) -> list[str]:
    """``--wait`` takes an optional SECONDS; when the word after it is not one (``atarictl stop
    --wait Pong``), it is a game, and --wait gets its default."""
    out = list(argv)
    for i, word in enumerate(out):
        if word != "--wait" or i + 1 >= len(out) or out[i + 1].startswith("-"):
            continue
        from daemon.config import parse_duration

        nxt = out[i + 1]
        try:
            parse_duration(int(nxt) if nxt.isdigit() else nxt)
        except ValueError:
            out[i] = f"--wait={default:g}"
    return out


def done_hint(row: dict[str, Any], profile: str | None) -> str:
    """Why ``start`` left a DONE game alone, and how to train it on."""
    episodes, target = row.get("episodes"), row.get("target")
    by_trainer = isinstance(episodes, int) and isinstance(target, int) and episodes < target
    if by_trainer:  # done before its episode count: --stop-avg100 in trainer_args
        why = f"its trainer reported it done at {episodes}/{target} episodes (--stop-avg100)"
        change = "drop --stop-avg100 from trainer_args and raise its target"
    else:
        why = f"its target is reached ({episodes}/{target} episodes)"
        change = "raise its target"
    head = f"{row['game']}: DONE, nothing to start: {why}. To train on, "
    if profile and _shipped(profile):
        # The packaged default lives inside the installed package: editing it there would be
        # lost on the next install, and reload re-reads the same path.
        return head + (
            f"copy the default profile ({profile}), {change} in the copy and restart "
            "atari-supervisord with --profile COPY"
        )
    where = f" ({profile})" if profile else ""
    return head + f"{change} in the profile{where} and run `atarictl reload`"


def _shipped(profile: str) -> bool:
    from pathlib import Path

    from daemon.resources import shipped_dir

    # The daemon may run another install than this atarictl: its package's folder counts too.
    parent = Path(profile).resolve().parent
    return parent == shipped_dir("profiles").resolve() or parent.parts[-3:] == (
        "daemon", "shipped", "profiles"
    )
