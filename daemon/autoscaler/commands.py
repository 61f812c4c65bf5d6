"""How the autoscaler plugs into the supervisor: the ``level``/``pin``/``unpin`` commands and a
reload hook. All of them run in the supervisor's loop.

The supervisor turns a ``ValueError`` (``PinError``) into a ``bad_request`` reply and, after any
command, compares ``current_level()`` with the running level to carry out a change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from daemon.autoscaler.autoscaler import Autoscaler, Decision
from daemon.config import Profile

RECENT = 10  # decisions shown by ``atarictl level``


class Host(Protocol):
    on_reload: list[Callable[[Profile], Callable[[], None]]]

    def register_command(self, name: str, fn: Any) -> None: ...


def _with_message(scaler: Autoscaler, decision: Decision) -> dict[str, Any]:
    return {
        **scaler.status(decision.at),
        "message": decision.reason,
        "level_changed": decision.level_changed,
    }


def attach(host: Host, scaler: Autoscaler) -> None:
    def level(_args: dict[str, Any]) -> dict[str, Any]:
        return {**scaler.status(), "recent": scaler.history(limit=RECENT)}

    def pin(args: dict[str, Any]) -> dict[str, Any]:
        name = args.get("level")
        if not isinstance(name, str) or not name:
            raise ValueError(
                'pin: args.level is required, e.g. {"cmd": "pin", "args": {"level": "light"}}'
            )
        return _with_message(scaler, scaler.pin(name))

    def unpin(_args: dict[str, Any]) -> dict[str, Any]:
        return _with_message(scaler, scaler.unpin())

    host.register_command("level", level)
    host.register_command("pin", pin)
    host.register_command("unpin", unpin)
    host.on_reload.append(lambda profile: scaler.prepare_reload(profile.autoscaler))
