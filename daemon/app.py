"""Wiring of ``atari-supervisord``: builds every part and runs the supervisor's loop.

Start-up order (recovery first, READY last):
1. profile (refused -> exit 2, nothing else happens), directories (refused when others can
   write them), the single-instance lock;
2. the store (locked/corrupt -> exit 1 with one line; never a silent fresh start);
3. the level source: the autoscaler (``daemon.autoscaler.Autoscaler``) records the boot and
   restores its state;
4. the daemon run row (heartbeat, clean-shutdown flag), games restored from the store and the
   run dirs, leftover trainers of a killed daemon stopped cleanly (see ``stop_leftovers``);
5. the supervisor, its commands (plus the level source's ``commands()``: ``level``/``pin``/
   ``unpin``), signal handlers (they only post events), the control socket, the scheduler;
6. first loop pass (queued games start), then ``READY=1`` to systemd, then the loop.

systemd notifications go through ``Notifier`` (READY/STATUS/WATCHDOG/STOPPING are sent by this
module and the supervisor).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from daemon.autoscaler import Autoscaler
from daemon.autoscaler.boots import BootIdError, read_boot_id
from daemon.clock import Clock, SystemClock
from daemon.config import Profile, ProfileError, load_profile
from daemon.paths import Dirs, check_trusted, lock_state_dir, resolve_dirs
from daemon.process import ProcessManager, RealOs
from daemon.process.os_seam import OsSeam, find_leftover
from daemon.sdnotify import Notifier
from daemon.store import Store, StoreError
from daemon.supervisor import Check, Request, Shutdown, Supervisor
from daemon.telemetry import GpuProbe

log = structlog.get_logger("daemon.app")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def make_level_source(
    profile: Profile, store: Store, clock: Clock
) -> tuple[Autoscaler, str | None]:
    """(level source, boot id). The autoscaler records the boot, then restores its state."""
    try:
        boot_id: str | None = read_boot_id(profile.paths.boot_id_file)
    except BootIdError as e:
        log.warning("boot id unreadable; reboots cannot be detected", error=str(e))
        boot_id = None
    auto = Autoscaler(
        profile.autoscaler, store, clock, start_level=profile.start_level,
        boot_id_path=profile.paths.boot_id_file,
    )  # fmt: skip
    auto.set_levels(profile)
    now = clock.now()
    if boot_id is not None:
        auto.record_boot(now, boot_id=boot_id)
    auto.restore(now)
    # Check once now: a box that reboots faster than checks.stability must still fall back,
    # and the games should start at the decided level, not restart into it a minute later.
    auto.check(now)
    return auto, boot_id


def join_fleet(
    profile: Profile, store: Store, clock: Clock, manager: ProcessManager, sup: Supervisor
) -> None:
    """Fleet mode: offer this profile's games to the shared queue (the work each has left, from
    the shared run dirs) and hand back what a previous run of this box held; the manager then
    claims games for its slots on its first pass."""
    from daemon.fleet import Fleet, fence_is

    fleet = Fleet(store, profile.fleet.lease, clock, [g.name for g in profile.games])
    work = {g.name: float(manager.work_left(g.name, g.target)) for g in profile.games}
    released = fleet.start(work)
    manager.fleet = fleet
    sup.evals.may_write = lambda game: fence_is(manager.run_dir(game), fleet.token(game))
    log.info("joined the fleet", box=store.box, lease=profile.fleet.lease, games=len(work),
             released_from_previous_run=released)  # fmt: skip


def start_control(sup: Supervisor, dirs: Dirs, profile: Profile) -> Any:
    from daemon.control_server.server import ControlServer

    server = ControlServer(dirs.socket, sup.handle_request, group=profile.control.socket_group)
    server.start()
    log.info("control socket listening", path=str(dirs.socket))
    return server


def install_signal_handlers(sup: Supervisor) -> None:
    # Handlers only post (SimpleQueue.put is reentrant, safe in a handler); the loop acts.
    def on_stop(signum: int, _frame: Any) -> None:
        sup.post(Shutdown(f"daemon got {signal.Signals(signum).name}"))

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, lambda *_: sup.post(Request("reload", {})))
    signal.signal(signal.SIGCHLD, lambda *_: sup.post(Check("child")))


def keep_profile_copy(dirs: Dirs, text: bytes | None) -> None:
    """Write the profile in effect into the state dir, atomically, so a backup (or a person
    reading the state dir months later) knows what produced this state. The copy is of the bytes
    read just after the profile was accepted; a failure costs only the copy, never the start."""
    if text is None:
        return
    tmp = dirs.profile_copy.with_name(dirs.profile_copy.name + ".tmp")
    try:
        tmp.write_bytes(text)
        os.replace(tmp, dirs.profile_copy)
    except OSError as e:
        log.warning("could not keep a copy of the profile in the state dir",
                    path=str(dirs.profile_copy), error=str(e))  # fmt: skip


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _copy_on_commit(dirs: Dirs, path: Path) -> Callable[[], None]:
    text = _read(path)  # now, as accepted: the file may change before the commit
    return lambda: keep_profile_copy(dirs, text)


def run_daemon(
    profile_path: Path,
    state: str | None = None,
    logs: str | None = None,
    runtime: str | None = None,
    *,
    clock: Clock | None = None,
    seam: OsSeam | None = None,
    notifier: Notifier | None = None,
) -> int:
    clock = clock or SystemClock()
    notifier = notifier or Notifier()
    try:
        profile = load_profile(profile_path)
    except ProfileError as e:
        log.error("profile refused; not starting", error=str(e))
        return EXIT_CONFIG
    dirs = resolve_dirs(state, runtime, logs, profile=profile.paths)
    try:
        check_trusted(dirs)  # before anything is created or read there
        for d in (dirs.state_dir, dirs.logs_dir, dirs.runtime_dir, dirs.runs_dir):
            d.mkdir(parents=True, exist_ok=True)
        check_trusted(dirs)  # what mkdir made, under a umask we do not control
        lock = lock_state_dir(dirs.state_dir, "atari-supervisord")
        # store.url: PostgreSQL; box: this daemon's name in a fleet (docs/fleet.md)
        store = Store.open(profile.store.url or dirs.db, box=profile.box)
    except (OSError, RuntimeError, StoreError) as e:
        log.error("cannot start", error=str(e))
        return EXIT_FAILURE
    log.info("starting", profile=profile.path, state_dir=str(dirs.state_dir), pid=os.getpid(),
             store=store.where, box=store.box, fleet=profile.fleet.enabled)  # fmt: skip
    keep_profile_copy(dirs, _read(profile_path))
    server = checks = endpoint = None
    try:
        source, boot_id = make_level_source(profile, store, clock)
        run_id = store.daemon_started(os.getpid(), boot_id, clock.now())
        manager = ProcessManager(profile, store, clock, seam or RealOs(), dirs.runs_dir,
                                 dirs.logs_dir, source.current_level())  # fmt: skip
        if profile.fleet.enabled:
            manager.games = {}  # a fleet box holds only the games it claims
        manager.restore()
        notifier.extend_timeout(profile.stop_grace + 30)  # leftovers may need stop_grace
        stopped = manager.stop_leftovers(find_leftover)
        if stopped:
            log.warning("stopped leftover trainers of a previous daemon", games=stopped)
        sup = Supervisor(profile, store, clock, manager, source, notifier=notifier,
                         gpu=GpuProbe(), daemon_run_id=run_id)  # fmt: skip
        if profile.fleet.enabled:
            join_fleet(profile, store, clock, manager, sup)
        install_signal_handlers(sup)
        from daemon.checks import Checks

        checks = Checks(profile.checks, sup.post, eval_every=profile.eval.every)
        sup.next_run = checks.next_run
        sup.on_reload.append(lambda p: checks.prepare_reschedule(p.checks))
        sup.on_reload.append(lambda p: lambda: checks.set_eval_every(p.eval.every))
        sup.on_reload.append(lambda p: _copy_on_commit(dirs, Path(p.path)))
        try:
            server = start_control(sup, dirs, profile)
            checks.probes["control socket"] = server.is_alive
        except Exception as e:
            log.error("control socket unavailable; atarictl cannot reach this daemon",
                      error=str(e))  # fmt: skip
        from daemon.metrics import start_endpoint

        endpoint = start_endpoint(sup, clock, profile.metrics.listen, checks)
        sup.post(Check("telemetry"))
        sup.loop_once()
        notifier.ready(sup.status_line())
        log.info("ready", status=sup.status_line())
        checks.start()
        return sup.run()
    except StoreError as e:
        log.error("store failed", error=str(e))
        return EXIT_FAILURE
    finally:
        if checks is not None:
            checks.shutdown()
        if endpoint is not None:
            endpoint.close()
        if server is not None:
            with contextlib.suppress(Exception):
                server.close()
        store.close()
        lock.close()
