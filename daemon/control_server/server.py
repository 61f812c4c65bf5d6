"""The daemon's control socket: a Unix socket that turns JSON lines into handler calls.

Design (why it cannot be stalled by a client):
- One selector thread owns every connection's I/O. Sockets are non-blocking, so a client that
  says nothing, dribbles bytes (slow loris) or never reads costs one small buffer and nothing
  else. Each connection has a deadline (`read_timeout`) for its whole request; the selector
  sweeps expired ones several times a second.
- Connections are capped; when the cap is reached the OLDEST unfinished connection is dropped to
  admit the new one, so an attacker holding many silent connections cannot lock out the
  operator's `atarictl status`.
- A complete request is handed to a small worker pool, because the handler
  (`Supervisor.handle_request`) blocks until the main loop answers. Requests beyond the pool's
  queue get an immediate `busy` reply instead of queueing without bound.
- Requests are parsed as JSON and passed as data to the handler; nothing reaches a shell.
"""

from __future__ import annotations

import contextlib
import grp
import os
import selectors
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from daemon.control_server.protocol import (
    MAX_REQUEST_BYTES,
    ProtocolError,
    ReplyCode,
    encode,
    error,
    parse_request,
)

log = structlog.get_logger("daemon.control_server")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServerError(RuntimeError):
    """The socket cannot be created (path in use by a live daemon, bad group, ...)."""


@dataclass
class _Conn:
    sock: socket.socket
    deadline: float
    opened: float
    buf: bytearray = field(default_factory=bytearray)


class ControlServer:
    def __init__(
        self,
        path: Path,
        handler: Handler,
        group: str | None = None,
        *,
        read_timeout: float = 5.0,
        max_request: int = MAX_REQUEST_BYTES,
        max_connections: int = 64,
        workers: int = 4,
        max_pending: int = 32,
        reply_timeout: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self._handler = handler
        self._group = group
        self._read_timeout = read_timeout
        self._max_request = max_request
        self._max_connections = max_connections
        self._max_pending = max_pending
        self._reply_timeout = reply_timeout
        self._workers = workers
        self._conns: dict[int, _Conn] = {}
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._inode: int | None = None
        # Self-pipe so close() wakes the selector immediately instead of after a poll tick.
        self._wake_r, self._wake_w = -1, -1

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise ControlServerError("control server already started")
        gid = self._resolve_group()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_socket()
        listener = self._bind(gid)
        self._inode = os.stat(self.path).st_ino
        self._listener = listener
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, data=None)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, data="wake")
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="control")
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="control-socket", daemon=True)
        self._thread.start()
        log.debug("control socket listening", path=str(self.path), group=self._group)

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        self._thread = None
        assert self._selector is not None and self._listener is not None
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._selector.close()
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._pool is not None:
            # Workers may be waiting on the main loop; do not block shutdown on them.
            self._pool.shutdown(wait=False, cancel_futures=True)
        # Only unlink our own socket: a new daemon may already have replaced the path.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        log.info("control socket closed", path=str(self.path))

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def is_alive(self) -> bool:
        """Whether the selector thread still serves; the health check fails when it does not
        (systemd then restarts the daemon, since nothing else would answer atarictl again)."""
        return self._thread is not None and self._thread.is_alive()

    # ---- setup helpers ---------------------------------------------------------------------

    def _bind(self, gid: int | None) -> socket.socket:
        """A listening socket at ``self.path`` with mode 0660 (and ``gid``) from the start.

        It is bound inside a fresh private directory (mkdtemp: mode 0700, unpredictable name)
        under a umask that yields 0660, so its mode never needs a chmod, and nobody else can
        swap the file for a symlink before the (non-following) chown; then it is renamed into
        place, which replaces whatever sits at the path without following it either.
        """
        private = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        tmp = private / "sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o117)
            try:
                listener.bind(str(tmp))
            finally:
                os.umask(old_umask)
            if gid is not None:
                os.chown(tmp, -1, gid, follow_symlinks=False)
            os.replace(tmp, self.path)
            listener.listen(128)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise ControlServerError(f"{self.path}: cannot create control socket: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            with contextlib.suppress(OSError):
                private.rmdir()
        return listener

    def _resolve_group(self) -> int | None:
        if self._group is None:
            return None
        try:
            return grp.getgrnam(self._group).gr_gid
        except KeyError:
            raise ControlServerError(
                f"control.socket_group: group {self._group!r} does not exist; "
                f"create it (groupadd {self._group}) or set socket_group to null"
            ) from None

    def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlServerError(
                f"{self.path}: exists and is not a socket; move it away or pick another "
                "--runtime-dir"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink()  # nobody listens: left over from a crash
            return
        finally:
            probe.close()
        raise ControlServerError(
            f"{self.path}: another daemon is listening on this socket; stop it first "
            "(atarictl shutdown) or use another --runtime-dir"
        )

    # ---- the selector loop -----------------------------------------------------------------

    def _serve(self) -> None:
        assert self._selector is not None
        while not self._stop.is_set():
            try:
                events = self._selector.select(timeout=0.2)
            except (OSError, ValueError):
                # The selector itself is gone (closed under us at shutdown, or broken): nothing
                # is left to serve with. is_alive() now says so and the health check fails.
                if not self._stop.is_set():
                    log.error("control socket selector failed; the control thread ends",
                              exc_info=True)  # fmt: skip
                break
            for key, _ in events:
                try:
                    self._on_event(key)
                except Exception:
                    # A bug in handling one connection must never end the thread: every later
                    # atarictl would wait out its timeout while the daemon looks healthy.
                    log.exception("control socket event failed; the connection is dropped")
                    conn = key.data
                    # Only a connection still ours: one handed to a worker is the worker's.
                    if isinstance(conn, _Conn) and any(c is conn for c in self._conns.values()):
                        self._reject(conn, "internal error reading this request; retry",
                                     ReplyCode.INTERNAL)  # fmt: skip
            try:
                self._expire(time.monotonic())
            except Exception:
                log.exception("control socket deadline sweep failed")

    def _on_event(self, key: selectors.SelectorKey) -> None:
        if key.data is None:
            self._accept()
        elif key.data == "wake":
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 64)
        else:
            self._read(key.data)

    def _accept(self) -> None:
        assert self._listener is not None and self._selector is not None
        for _ in range(64):  # accept a burst, but return to the loop to serve reads too
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, keep serving existing clients
                log.warning("control accept failed", error=str(exc))
                return
            if len(self._conns) >= self._max_connections:
                oldest = min(self._conns.values(), key=lambda c: c.opened)
                self._reject(oldest, "too many open control connections; retry", ReplyCode.BUSY)
            sock.setblocking(False)
            now = time.monotonic()
            conn = _Conn(sock=sock, deadline=now + self._read_timeout, opened=now)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, data=conn)

    def _read(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(8192)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not chunk:  # client closed or half-closed before a full line
            if conn.buf.strip():
                self._dispatch(conn, bytes(conn.buf))
            else:
                self._drop(conn)
            return
        conn.buf += chunk
        newline = conn.buf.find(b"\n")
        if newline < 0:
            if len(conn.buf) > self._max_request:
                self._reject(
                    conn,
                    f"request larger than {self._max_request} bytes; send one short JSON line",
                    ReplyCode.TOO_LARGE,
                )
            return
        if newline > self._max_request:
            self._reject(
                conn,
                f"request larger than {self._max_request} bytes; send one short JSON line",
                ReplyCode.TOO_LARGE,
            )
            return
        self._dispatch(conn, bytes(conn.buf[:newline]))

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self._reject(
                conn,
                f"no complete request within {self._read_timeout:g} s; send one JSON line",
                ReplyCode.TIMEOUT,
            )

    def _detach(self, conn: _Conn) -> None:
        assert self._selector is not None
        self._conns.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)

    def _drop(self, conn: _Conn) -> None:
        self._detach(conn)
        conn.sock.close()

    def _reject(self, conn: _Conn, message: str, code: ReplyCode) -> None:
        # Best effort, never blocking: a client that does not read simply misses the reason.
        with contextlib.suppress(OSError):
            conn.sock.send(encode(error(code, message)))
        self._drop(conn)

    def _dispatch(self, conn: _Conn, line: bytes) -> None:
        assert self._pool is not None
        try:
            request = parse_request(line)
        except ProtocolError as exc:
            self._reject(conn, str(exc), exc.code)
            return
        with self._pending_lock:
            if self._pending >= self._max_pending:
                busy = True
            else:
                busy = False
                self._pending += 1
        if busy:
            self._reject(conn, "daemon busy with other control requests; retry", ReplyCode.BUSY)
            return
        self._detach(conn)
        try:
            self._pool.submit(self._answer, conn.sock, request)
        except RuntimeError:  # pool shut down: we are closing
            with self._pending_lock:
                self._pending -= 1
            conn.sock.close()

    # ---- worker side -----------------------------------------------------------------------

    def _answer(self, sock: socket.socket, request: dict[str, Any]) -> None:
        try:
            try:
                reply = self._handler(request)
                if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
                    raise TypeError(f"handler returned {type(reply).__name__}, not a reply")
                data = encode(reply)
            except Exception as exc:
                log.exception("control handler failed", cmd=request.get("cmd"))
                reply = error(ReplyCode.INTERNAL, f"internal error in {request.get('cmd')}: {exc}")
                data = encode(reply)
            sock.setblocking(True)
            sock.settimeout(self._reply_timeout)
            with contextlib.suppress(OSError):
                sock.sendall(data)
        finally:
            with self._pending_lock:
                self._pending -= 1
            sock.close()
