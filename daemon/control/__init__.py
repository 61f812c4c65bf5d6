"""Control socket of the daemon: wire protocol and server (atarictl is the client)."""

from daemon.control.server import ControlServer, ControlServerError

__all__ = ["ControlServer", "ControlServerError"]
