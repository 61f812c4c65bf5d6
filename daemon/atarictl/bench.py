"""Control-socket attack clients and a latency benchmark (a client of the server, so it lives
on the client side: server code never imports atarictl).

`python -m daemon.atarictl.bench` measures how fast a normal request is answered, first on a
quiet socket, then while silent, slow-loris, flooding, garbage and half-open clients hammer it,
and prints a table. Without `--socket` it benchmarks a bare ControlServer with an echo handler
in a temporary directory; with `--socket PATH` it measures a running daemon (`status`).
The tests use the same `attack()` against a bare server and the real daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from daemon.atarictl.client import Client
from daemon.control_server.protocol import ok


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


@contextlib.contextmanager
def attack(path: Path, *, silent: int = 40, loris: int = 10) -> Iterator[None]:
    """While the block runs: silent clients, slow-loris dribblers, a flooder, garbage senders and
    half-open clients keep hitting the socket."""
    stop = threading.Event()
    held: list[socket.socket] = []
    lock = threading.Lock()

    def keep_silent() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                s = _connect(path)
                with lock:
                    held.append(s)
            stop.wait(0.05)

    def slow_loris() -> None:
        while not stop.is_set():
            try:
                s = _connect(path)
                for ch in b'{"cmd": "status", "args": {"pad": "':
                    s.send(bytes([ch]))
                    if stop.wait(0.1):
                        break
                s.close()
            except OSError:
                stop.wait(0.05)

    def flood() -> None:
        junk = os.urandom(1 << 16)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                s = _connect(path)
                s.settimeout(0.5)
                for _ in range(64):
                    s.sendall(junk)
                s.close()

    def garbage_and_half_open() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                s = _connect(path)
                s.sendall(b"\x00not json at all\n")
                s.close()
                s = _connect(path)
                s.sendall(b'{"cmd": "sta')
                s.shutdown(socket.SHUT_WR)
                s.close()
            stop.wait(0.02)

    workers = [keep_silent, flood, garbage_and_half_open] + [slow_loris] * loris
    threads = [threading.Thread(target=fn, daemon=True) for fn in workers]
    for t in threads:
        t.start()
    try:
        # Let the silent clients pile up past any connection cap before measuring.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if len(held) >= silent:
                    break
            time.sleep(0.05)
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        with lock:
            for s in held:
                s.close()


def latencies(path: Path, cmd: str, calls: int) -> list[float]:
    client = Client(path, timeout=10)
    out = []
    for _ in range(calls):
        start = time.monotonic()
        client.call(cmd)
        out.append(time.monotonic() - start)
    return out


def _row(name: str, xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(0.95 * len(xs)))]
    return (
        f"{name:<22} {len(xs):>5} {statistics.median(xs) * 1000:>9.1f} "
        f"{p95 * 1000:>9.1f} {xs[-1] * 1000:>9.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m daemon.atarictl.bench",
        description="Latency of control requests on a quiet socket and under attack.",
    )
    p.add_argument("--socket", type=Path, help="a running daemon's atarictl.sock")
    p.add_argument("--calls", type=int, default=50, help="requests per phase (default 50)")
    args = p.parse_args(argv)
    from daemon.logging import configure_logging

    configure_logging(level="warning")  # keep the table free of the server's info lines
    with contextlib.ExitStack() as stack:
        if args.socket is None:
            from daemon.control_server.server import ControlServer

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            path = tmp / "bench.sock"
            stack.enter_context(ControlServer(path, ok, max_connections=32))
            cmd, target = "echo", "bare ControlServer (echo handler)"
        else:
            path, cmd, target = args.socket, "status", f"daemon at {args.socket} (status)"
        quiet = latencies(path, cmd, args.calls)
        with attack(path):
            loud = latencies(path, cmd, args.calls)
    print(f"target: {target}; {os.cpu_count()} CPUs")
    print(f"{'phase':<22} {'calls':>5} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
    print(_row("quiet", quiet))
    print(_row("under attack", loud))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
