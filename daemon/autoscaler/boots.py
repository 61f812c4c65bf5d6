"""Reboot detection: the kernel's boot id changes on every boot, the daemon's heartbeat does not.

``detect_boot`` is pure (tested with plain values); ``read_boot_id`` and ``kernel_boot_time`` are
the two readings of the real machine. The default path is Linux's; tests point it at a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

DEFAULT_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


class BootIdError(RuntimeError):
    """The boot id could not be read; str() is one line naming the path and the fix."""


def read_boot_id(path: str | Path = DEFAULT_BOOT_ID_PATH) -> str:
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    except OSError as exc:
        raise BootIdError(
            f"{path}: cannot read the kernel boot id ({exc.strerror or exc}); "
            "set paths.boot_id_file to a readable file"
        ) from exc
    if not text:
        raise BootIdError(f"{path}: empty boot id; set paths.boot_id_file to a non-empty file")
    return text.splitlines()[0]


def kernel_boot_time() -> float:
    """Unix time the running kernel booted (used to estimate how long the box was down)."""
    return float(psutil.boot_time())


@dataclass(frozen=True)
class PreviousRun:
    """What the store knows about the daemon before this start."""

    boot_id: str | None  # the last recorded boot id
    last_heartbeat: float | None  # latest daemon heartbeat under that boot
    clean_shutdown: bool | None  # whether that daemon run stopped cleanly (None: unknown)


@dataclass(frozen=True)
class BootRecord:
    boot_id: str
    detected_at: float
    kernel_boot_time: float | None
    previous_boot_id: str | None
    last_heartbeat_before: float | None
    downtime_s: float | None
    previous_clean_shutdown: bool | None

    @property
    def is_reboot(self) -> bool:
        """The first boot ever seen is not a reboot: there is nothing it interrupted."""
        return self.previous_boot_id is not None


def detect_boot(
    boot_id: str, boot_time: float | None, now: float, previous: PreviousRun
) -> BootRecord | None:
    """A BootRecord when ``boot_id`` is new; None when only the daemon restarted (same boot)."""
    if previous.boot_id == boot_id:
        return None
    downtime = None
    if previous.last_heartbeat is not None and boot_time is not None:
        # Down from the last sign of life until the kernel came back; never negative on clock skew.
        downtime = max(0.0, boot_time - previous.last_heartbeat)
    return BootRecord(
        boot_id=boot_id,
        detected_at=now,
        kernel_boot_time=boot_time,
        previous_boot_id=previous.boot_id,
        last_heartbeat_before=previous.last_heartbeat,
        downtime_s=downtime,
        previous_clean_shutdown=previous.clean_shutdown if previous.boot_id else None,
    )


def describe(record: BootRecord) -> str:
    """One line for the decisions table and the log."""
    if not record.is_reboot:
        return f"boot: first boot seen ({record.boot_id})"
    parts = [f"boot: reboot detected, boot id {record.previous_boot_id} -> {record.boot_id}"]
    if record.downtime_s is not None:
        parts.append(f"down about {record.downtime_s:.0f} s since the last heartbeat")
    if record.previous_clean_shutdown is not None:
        parts.append(
            "previous daemon shut down cleanly"
            if record.previous_clean_shutdown
            else "previous daemon did not shut down cleanly"
        )
    return "; ".join(parts)
