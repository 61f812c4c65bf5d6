"""Acceptance: a real memory limit on the real service in the systemd sandbox.

The unit runs tests/systemd/pressure-profile.yaml: light fits, medium's replay buffers cannot.
Once light runs, the test measures the service's working set and gives the unit a MemoryMax= of
1.6 times it (``systemctl set-property --runtime``), then lets the autoscaler promote (guard off).
As medium's buffers fill, the daemon must shed back to light on its own cgroup's memory headroom
before the kernel OOM-kills anything (``oom_kill`` 0 in the cgroup's own counter), the trainers
checkpointing on the way down, and the decision naming the signal. Then, with the guard turned on
by a reload, the next promotion is refused with the projected footprint in its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from atari_service import UNIT, Service
from systemd_sandbox import wait_for

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

PROFILE = Path(__file__).with_name("pressure-profile.yaml")
GAMES = ("Pong", "Breakout")


def _cgroup_file(svc: Service, name: str) -> str:
    """A file of the unit's v1 memory cgroup (hybrid host) or v2 cgroup, read in the sandbox."""
    for base in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup"):
        r = svc.box.run("cat", f"{base}/system.slice/{UNIT}/{name}", check=False)
        if r.returncode == 0:
            return r.stdout
    raise AssertionError(f"no {name} for {UNIT}")


def _working_set_mb(svc: Service) -> float:
    usage = int(_cgroup_file(svc, "memory.usage_in_bytes"))
    stat = dict(line.split() for line in _cgroup_file(svc, "memory.stat").splitlines())
    return (usage - int(stat.get("total_inactive_file", 0))) / 2**20


def _oom_kills(svc: Service) -> int:
    text = _cgroup_file(svc, "memory.oom_control")
    return int(dict(line.split() for line in text.splitlines())["oom_kill"])


def _level_reasons(svc: Service) -> list[tuple[float, str]]:
    return [(at, reason) for at, reason in svc.query(
        "SELECT at, reason FROM decisions WHERE kind = 'level' ORDER BY id")]  # fmt: skip


def _first(svc: Service, prefix: str, after: float = 0.0) -> tuple[float, str] | None:
    return next(((at, r) for at, r in _level_reasons(svc) if r.startswith(prefix) and at > after),
                None)  # fmt: skip


def _running(svc: Service, batch_envs: int) -> bool:
    for game in GAMES:
        p = svc.progress(game)
        if not p or p.get("status") != "running" or p.get("num_envs") != batch_envs:
            return False
    return True


def test_a_memory_limit_sheds_medium_before_any_oom_kill_and_the_guard_refuses_it(
    service: Service,
) -> None:
    result = service.atarictl("install-service", "--profile", str(PROFILE))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: _running(service, 2), 240, f"light never ran: {service.journal()[-3000:]}")
    # Light's own peak: learning has started (after 1000 transitions) and its buffers are full.
    wait_for(lambda: all((service.progress(g) or {}).get("env_steps", 0) >= 3000 for g in GAMES),
             240, "light never learned")  # fmt: skip
    light_mb = _working_set_mb(service)
    limit_mb = int(light_mb * 1.6)
    service.box.systemctl("set-property", "--runtime", UNIT, f"MemoryMax={limit_mb}M")
    assert int(_cgroup_file(service, "memory.limit_in_bytes")) == limit_mb * 2**20

    promoted = None

    def promoted_once() -> bool:
        nonlocal promoted
        promoted = _first(service, "promote:")
        return promoted is not None

    wait_for(promoted_once, 120, f"no promotion: {_level_reasons(service)}")
    assert promoted is not None
    shed = None

    def shed_once() -> bool:
        nonlocal shed
        shed = _first(service, "shed:", promoted[0])
        return shed is not None

    wait_for(shed_once, 180, f"no shed: {_level_reasons(service)} {service.journal()[-2000:]}")
    assert shed is not None
    at, reason = shed
    assert reason.startswith("shed: cgroup memory headroom "), reason
    assert "< mem_available_min_pct=30%" in reason and "shed_after=2 s" in reason
    assert "medium -> light" in reason
    # Before any trainer was OOM-killed: the cgroup's own counter, and no run ended by SIGKILL.
    assert _oom_kills(service) == 0
    wait_for(lambda: _running(service, 2), 120, "light did not come back")
    medium_runs = service.query(
        "SELECT game, outcome, signal, reason FROM runs WHERE level = 'medium' AND ended_at >= ?",
        promoted[0])  # fmt: skip
    assert {g for g, *_ in medium_runs} == set(GAMES), medium_runs
    assert all(outcome == "stopped" and sig is None for _, outcome, sig, _ in medium_runs)
    assert all("level medium -> light" in why for *_, why in medium_runs), medium_runs
    # They checkpointed on the way down: each run dir's progress names a checkpoint after the
    # shed (checkpoint_every is 1 h, so only the SIGTERM wrote it).
    for game in GAMES:
        ckpt = service.progress(game).get("last_checkpoint_time")
        assert ckpt is not None and ckpt >= at - 1, (game, ckpt, at)
    # The daemon's own telemetry saw the limit and no OOM kill either.
    oom = service.query("SELECT json_extract(payload, '$.oom_kill'), json_extract(payload, "
                        "'$.oom_kill_source') FROM telemetry WHERE kind = 'pressure' "
                        "ORDER BY id DESC LIMIT 1")  # fmt: skip
    assert oom == [(0, "cgroup")]
    # Its PSI came from the unit's own cgroup v2 directory, parsed from the real files there.
    (source, full10), = service.query(
        "SELECT json_extract(payload, '$.psi_source'), json_extract(payload, "
        "'$.psi.memory.full.avg10') FROM telemetry WHERE kind = 'pressure' "
        "ORDER BY id DESC LIMIT 1")  # fmt: skip
    assert source.startswith("cgroup:/sys/fs/cgroup/") and source.endswith(f"/system.slice/{UNIT}")
    assert isinstance(full10, float) and 0.0 <= full10 <= 100.0

    # The guard on (a reload of the edited profile): the next promotion is refused, with the
    # projection from what the light trainers use now.
    installed = service.box.root / "etc/atari-supervisor/profile.yaml"
    installed.write_text(installed.read_text().replace("guard: false", "guard: true"))
    reload = service.atarictl("reload")
    assert reload.returncode == 0, reload.stderr
    refused = None

    def refused_once() -> bool:
        nonlocal refused
        refused = _first(service, "promote refused:", at)
        return refused is not None

    wait_for(refused_once, 120, f"no refusal: {_level_reasons(service)}")
    assert refused is not None
    assert refused[1].startswith("promote refused: projected footprint of medium "), refused
    assert "measured" in refused[1] and "does not fit" in refused[1]
    assert _first(service, "promote:", at) is None
    level = service.atarictl("level")
    assert "promotion guard: projected footprint of medium" in level.stdout, level.stdout
    assert _oom_kills(service) == 0
    # The story, for a reader of the test log (pytest -s).
    print(f"\nlight working set {light_mb:.0f} MiB, MemoryMax={limit_mb}M")
    for _, why in _level_reasons(service):
        print(why)
    print(level.stdout)
