"""Boot a real systemd as PID 1 in private namespaces, for the service's integration tests.

The host runs systemd as a program but not as PID 1, so each sandbox is
``unshare --pid --fork --mount-proc --mount --uts --ipc`` running a small shell prelude that
builds a private filesystem view and then ``exec``s ``/lib/systemd/systemd --system``.
Everything systemd or the service writes lands in private mounts or in the sandbox's own
``root`` directory (under pytest's tmp_path), never on the host:

- ``/run``, ``/tmp``, ``/dev/shm`` are fresh tmpfs. Without the private /tmp,
  systemd-tmpfiles would wipe the host's /tmp (those units are masked as well).
- ``/etc`` is ``root/etc``: a copy of the host's /etc made on the first boot, without the
  host's enabled units. ``/var`` is ``root/var``. Both survive a sandbox "reboot" (a new
  sandbox on the same root), like a disk does, so the reboot test sees persisted state, and
  the test can read ``root/var/lib/atari-supervisor`` directly from the host.
- Each boot gets its own boot id in ``/run/sandbox-boot-id``, also mounted over
  ``/proc/sys/kernel/random/boot_id``. A service with ProtectKernelTunables= sees the kernel's
  real one again (systemd remounts /proc/sys for it), so the daemon under test reads the file
  through its profile's ``paths.boot_id_file``.
- ``container=`` is set for PID 1, so systemd treats the sandbox as a container: no swap,
  loop or device-mapper teardown at shutdown, no hardware units.

Only one sandbox may run at a time on a host (they share the cgroup hierarchy), which an
advisory lock on the systemd binary enforces across processes. Teardown kills the inner
systemd (which takes its whole PID namespace along) and the ``unshare`` process we started,
each by pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

SYSTEMD = Path("/lib/systemd/systemd")
REPO = Path(__file__).resolve().parents[2]

# Units that must not run in the sandbox: they would touch host state (tmpfiles wipes /tmp,
# utmp/random-seed/pstore write /var, sysctl/binfmt/modules-load change the kernel, timesyncd
# sets the clock), or are pointless and slow without a console (gettys, logind).
MASKED_UNITS = (
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-clean.service",
    "systemd-tmpfiles-clean.timer",
    "postgresql.service",
    "getty@tty1.service",
    "getty.target",
    "console-getty.service",
    "serial-getty@.service",
    "container-getty@.service",
    "systemd-logind.service",
    "systemd-remount-fs.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "systemd-binfmt.service",
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-sysusers.service",
    "systemd-random-seed.service",
    "systemd-pstore.service",
    "systemd-timesyncd.service",
    "systemd-firstboot.service",
    "systemd-repart.service",
    "systemd-machine-id-commit.service",
    "e2scrub_reap.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
)

# Runs inside the new namespaces with arguments ROOT BOOT_ID [KEEP...]; every mount below is
# private to them. KEEP paths (the checkout, the venv) live where the sandbox hides the host's
# directories (e.g. a CI clone under /tmp) and are carried through like ROOT.
_PRELUDE = r"""
set -eu
root="$1"; boot_id="$2"; shift 2
mount --make-rprivate /
mount -t tmpfs -o mode=0755 sandbox-run /run
# Bind ROOT and the KEEP paths aside before /tmp is hidden, then back at the same paths, so
# paths mean the same inside and out.
mkdir -p /run/.sandbox-keep/root
mount --bind "$root" /run/.sandbox-keep/root
i=0
for keep in "$@"; do
    i=$((i + 1)); mkdir -p "/run/.sandbox-keep/$i"; mount --bind "$keep" "/run/.sandbox-keep/$i"
done
mount -t tmpfs -o mode=1777 sandbox-tmp /tmp
mkdir -p "$root"
mount --bind /run/.sandbox-keep/root "$root"
mount -t tmpfs -o mode=1777 sandbox-shm /dev/shm
if [ ! -e "$root/etc/.sandbox-copy" ]; then
    mkdir -p "$root/etc"
    cp -a /etc/. "$root/etc/"
    # The host's enabled units (postgresql, timers, gettys) are none of the sandbox's business.
    rm -rf "$root/etc/systemd/system"
    mkdir -p "$root/etc/systemd/system"
    touch "$root/etc/.sandbox-copy"
fi
mount --bind "$root/etc" /etc
mkdir -p "$root/var/tmp" "$root/var/lib" "$root/var/log/journal" "$root/var/cache"
chmod 1777 "$root/var/tmp"
ln -sfn /run "$root/var/run"
ln -sfn /run/lock "$root/var/lock"
mount --bind "$root/var" /var
i=0
for keep in "$@"; do
    i=$((i + 1)); mkdir -p "$keep"; mount --bind "/run/.sandbox-keep/$i" "$keep"
done
umount /run/.sandbox-keep/*
rmdir /run/.sandbox-keep/* /run/.sandbox-keep
printf '%s\n' "$boot_id" > /run/sandbox-boot-id
mount --bind /run/sandbox-boot-id /proc/sys/kernel/random/boot_id
mkdir -p /run/systemd/system
for unit in $MASKED_UNITS; do ln -sf /dev/null "/run/systemd/system/$unit"; done
hostname atari-sandbox
exec </dev/null >>"$root/console.log" 2>&1
exec env -i container=atari-sandbox PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --system --unit=multi-user.target --show-status=no
"""


class SandboxError(RuntimeError):
    pass


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll until predicate() is true; the timeout is a generous failure bound, not a
    measurement."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (waited {timeout} s)")
        time.sleep(0.2)


def unavailable_reason() -> str | None:
    """Why a systemd sandbox cannot be booted here, or None when it can."""
    if os.geteuid() != 0:
        return "the systemd sandbox needs root (CI runs as root)"
    for tool in ("unshare", "nsenter", "systemctl", "journalctl"):
        if shutil.which(tool) is None:
            return f"the systemd sandbox needs {tool!r} on PATH"
    if not SYSTEMD.exists():
        return f"the systemd sandbox needs {SYSTEMD}"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--uts", "--ipc", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"unshare is not permitted here: {probe.stderr.strip() or probe.returncode}"
    return None


class Sandbox:
    """One boot of a systemd sandbox on a root directory that persists across boots."""

    def __init__(self, root: Path, boot_id: str | None = None) -> None:
        self.root = root
        self.boot_id = boot_id or str(uuid.uuid4())
        self.unshare: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # the inner systemd, as seen from the host
        self._lock: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def boot(self, timeout: float = 90) -> Sandbox:
        self.root.mkdir(parents=True, exist_ok=True)
        self._acquire_lock(timeout)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MASKED_UNITS": " ".join(MASKED_UNITS),
        }
        log = open(self.root / "unshare.log", "ab")  # noqa: SIM115 - closed once handed over
        try:
            self.unshare = subprocess.Popen(
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--mount",
                    "--uts",
                    "--ipc",
                    "--kill-child=SIGKILL",
                    "--",
                    "bash",
                    "-c",
                    _PRELUDE,
                    "atari-sandbox",
                    str(self.root),
                    self.boot_id,
                    *self.keep_paths(),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
            log.close()
            self.pid = self._find_systemd(timeout)
            self.wait_settled(timeout)
        except BaseException:
            log.close()
            self.kill()
            raise
        return self

    @staticmethod
    def keep_paths() -> list[str]:
        """The checkout and the interpreter, where the sandbox would hide them."""
        hidden = ("/tmp", "/var", "/run", "/dev/shm")
        wanted = {REPO, Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).parent}
        return sorted(
            str(path)
            for path in wanted
            if any(path == Path(h) or Path(h) in path.parents for h in hidden)
        )

    def _acquire_lock(self, timeout: float) -> None:
        # An advisory lock on the (read-only) systemd binary: it writes nothing and serializes
        # sandboxes across pytest processes, since they would share one cgroup tree.
        fd = os.open(SYSTEMD, os.O_RDONLY | os.O_CLOEXEC)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise SandboxError("another systemd sandbox is running on this host") from None
                time.sleep(0.5)
        self._lock = fd

    def _find_systemd(self, timeout: float) -> int:
        assert self.unshare is not None
        children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.unshare.poll() is not None:
                raise SandboxError(f"the sandbox exited early:\n{self.diagnostics()}")
            with contextlib.suppress(OSError):
                for pid in children.read_text().split():
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
            time.sleep(0.1)
        raise SandboxError(f"no systemd came up in the sandbox:\n{self.diagnostics()}")

    def wait_settled(self, timeout: float = 90) -> str:
        """Wait until boot finished; 'degraded' is fine (some host units fail in a sandbox)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.systemctl("is-system-running", check=False, timeout=30).stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.3)
        raise SandboxError(f"systemd did not settle (state {state!r}):\n{self.diagnostics()}")

    def shutdown(self, timeout: float = 120) -> None:
        """A clean poweroff: systemd stops every service as on a real shutdown, then the PID
        namespace ends (reboot(2) from a non-initial PID namespace only ends that namespace)."""
        assert self.unshare is not None
        self.systemctl("poweroff", "--no-block", check=False)
        try:
            self.unshare.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise SandboxError(f"the sandbox did not power off in {timeout} s") from None
        self.kill()

    def kill(self) -> None:
        """Tear down by pid: SIGKILL to the namespace's init ends every process in it."""
        for pid in (self.pid, self.unshare.pid if self.unshare else None):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.unshare is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.unshare.wait(30)
        # The namespace dies asynchronously: the kernel kills and reaps every member before
        # its init goes away. Keep the lock until then, so the next sandbox starts clean.
        try:
            deadline = time.monotonic() + 30
            while self.pid is not None and Path(f"/proc/{self.pid}").exists():
                if time.monotonic() > deadline:
                    raise SandboxError(f"the sandbox's systemd (pid {self.pid}) outlived SIGKILL")
                time.sleep(0.1)
        finally:
            self.pid = None
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    @property
    def alive(self) -> bool:
        return self.unshare is not None and self.unshare.poll() is None

    # -- talking to it --------------------------------------------------------------------------

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the sandbox's namespaces (as root)."""
        if self.pid is None:
            raise SandboxError("the sandbox is not running")
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "SYSTEMD_PAGER": "",
            "SYSTEMD_COLORS": "0",
            "LANG": "C.UTF-8",
        }
        cmd = ["nsenter", "-t", str(self.pid), "-p", "-m", "-u", "-i", "--", *argv]
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, input=input
        )
        if check and result.returncode != 0:
            raise SandboxError(
                f"{' '.join(argv)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def systemctl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def journal(self, unit: str, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-u", unit, *args, check=False).stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def install_unit(self, name: str, text: str, where: str = "/run/systemd/system") -> None:
        """Write a unit file inside the sandbox (under its private /run by default)."""
        self.run("mkdir", "-p", where)
        self.run("tee", f"{where}/{name}", input=text)
        self.systemctl("daemon-reload")

    def diagnostics(self) -> str:
        parts = []
        for name in ("unshare.log", "console.log"):
            path = self.root / name
            if path.exists():
                parts.append(
                    f"--- {name} (tail) ---\n"
                    + "\n".join(path.read_text(errors="replace").splitlines()[-30:])
                )
        return "\n".join(parts)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
