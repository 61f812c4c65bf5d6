"""A minimal sd_notify(3) client.

The protocol is a datagram of newline-separated ``KEY=VALUE`` lines sent to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (an abstract socket when it starts with ``@``). It is stable and
documented, so a small module beats a dependency. Without ``$NOTIFY_SOCKET`` every call is a
no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to systemd; silent when not under systemd."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        if address:
            # An abstract socket is spelled with a leading '@' but addressed with a NUL byte.
            self._address = "\0" + address[1:] if address.startswith("@") else address

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines; True when sent. Errors never propagate: the daemon must not
        die because systemd went away (e.g. during a shutdown)."""
        if self._address is None:
            return False
        # Each value is one line; a newline would start a new (bogus) assignment.
        lines = (f"{k.upper()}={str(v).replace(chr(10), ' ')}" for k, v in fields.items())
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify(ready=1)
        return self.notify(ready=1, status=status)

    def status(self, text: str) -> bool:
        return self.notify(status=text)

    def watchdog(self) -> bool:
        return self.notify(watchdog=1)

    def stopping(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify(stopping=1)
        return self.notify(stopping=1, status=status)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask systemd for more time (start or stop) while trainers checkpoint."""
        return self.notify(extend_timeout_usec=int(seconds * 1_000_000))


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: without NOTIFY_SOCKET, so that a trainer can never
    talk to systemd in the daemon's name (SPEC §4)."""
    child = dict(os.environ if env is None else env)
    child.pop("NOTIFY_SOCKET", None)
    child.pop("WATCHDOG_USEC", None)
    child.pop("WATCHDOG_PID", None)
    return child
