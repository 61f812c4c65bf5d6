"""atarictl's side of the control socket: one request, one reply, clear failures."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any

from daemon.control_server.protocol import (
    MAX_REPLY_BYTES,
    ProtocolError,
    ReplyCode,
    encode,
    parse_reply,
)


class CtlError(Exception):
    """A failure atarictl reports as one line with a distinct exit code."""

    exit_code = 1

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class DaemonUnreachable(CtlError):
    exit_code = 3


class PermissionDenied(CtlError):
    exit_code = 4


class UnknownGame(CtlError):
    exit_code = 5


class DaemonTimeout(CtlError):
    exit_code = 7


class CommandFailed(CtlError):
    exit_code = 1


def _unreachable(path: Path, why: str) -> DaemonUnreachable:
    return DaemonUnreachable(
        f"daemon not reachable at {path} ({why}); start it (systemctl start atari-supervisor or "
        "atari-supervisord --state-dir DIR) or point atarictl at it with --state-dir/--socket",
        "unreachable",
    )


class Client:
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Send one request; return its result or raise a CtlError subclass."""
        reply = self.raw({"cmd": cmd, "args": args or {}})
        if reply["ok"]:
            return reply.get("result")
        code = str(reply.get("code", "error"))
        message = str(reply.get("error", "daemon reported an error without a message"))
        if code == ReplyCode.UNKNOWN_GAME:
            raise UnknownGame(message, code)
        if code == ReplyCode.TIMEOUT:
            raise DaemonTimeout(f"{message}; its main loop is busy, retry shortly", code)
        raise CommandFailed(message, code)

    def raw(self, request: dict[str, Any]) -> dict[str, Any]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(str(self.path))
            except FileNotFoundError:
                raise _unreachable(self.path, "no socket file") from None
            except PermissionError:
                raise PermissionDenied(
                    f"permission denied on {self.path}; run as root or as a member of the "
                    "socket's group (profile control.socket_group), e.g. sudo atarictl ...",
                    "permission_denied",
                ) from None
            except ConnectionRefusedError:
                raise _unreachable(self.path, "nobody listening: stale socket") from None
            except TimeoutError:
                raise DaemonTimeout(
                    f"daemon at {self.path} did not accept within {self.timeout:g} s; it may be "
                    "overloaded, retry or check journalctl -u atari-supervisor",
                    "timeout",
                ) from None
            except OSError as exc:
                if exc.errno in (errno.ENOTSOCK, errno.ECONNREFUSED):
                    raise _unreachable(self.path, exc.strerror or str(exc)) from None
                raise
            sock.sendall(encode(request))
            data = bytearray()
            while b"\n" not in data:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    raise DaemonTimeout(
                        f"daemon did not answer {request.get('cmd')!r} within {self.timeout:g} s;"
                        " retry with a larger --timeout or check journalctl -u atari-supervisor",
                        "timeout",
                    ) from None
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_REPLY_BYTES:
                    raise CommandFailed("daemon reply is too large", ReplyCode.BAD_REPLY)
            if not data:
                raise DaemonUnreachable(
                    "daemon closed the connection without answering; it may be shutting down "
                    "(check atarictl status in a moment)",
                    "unreachable",
                )
            try:
                return parse_reply(bytes(data).split(b"\n", 1)[0])
            except ProtocolError as exc:
                raise CommandFailed(str(exc), exc.code) from None
        finally:
            sock.close()

    def reachable(self) -> bool:
        """True when something listens on the socket; only connects, so it never waits on the
        daemon's main loop."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(2.0)
        try:
            sock.connect(str(self.path))
        except PermissionError:
            return True  # a daemon is there, we just may not talk to it
        except OSError:
            return False
        finally:
            sock.close()
        return True
