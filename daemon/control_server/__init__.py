"""Control socket of the daemon: wire protocol and server (atarictl is the client)."""

from daemon.control_server.server import ControlServer, ControlServerError

__all__ = ["ControlServer", "ControlServerError"]
