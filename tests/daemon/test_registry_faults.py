"""Model-registry faults (issue 16 item 13): a checkpoint whose inner pickle inflates without
bound, and bad files that must be read and logged once per version, not on every health check.
Real framed files built with the trainer's own framing; the registry never imports torch."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import structlog

from daemon import registry
from daemon.registry import MAX_PICKLE_BYTES, ModelRegistry, Unreadable, read_metadata
from daemon.store import Store
from trainer.contract import frame


def _torch_like(pkl: bytes) -> bytes:
    """A torch.save-shaped zip (archive/data.pkl), deflated, framed as the trainer frames."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pkl)
    return frame(buf.getvalue())


def test_a_checkpoint_whose_pickle_inflates_past_the_bound_is_unreadable_without_reading_it(
    tmp_path: Path,
) -> None:
    # 64 MiB of one byte deflates to ~64 KiB: the file is small, its data.pkl is not.
    bomb = pickle.dumps({"stats": {"episodes": 1}, "pad": b"\0" * (64 << 20)})
    path = tmp_path / "ckpt-000000001.pt"
    path.write_bytes(_torch_like(bomb))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(Unreadable, match=f"larger than {MAX_PICKLE_BYTES} bytes"):
        read_metadata(path)


@pytest.mark.parametrize(
    "payload",
    [b"not a zip at all", _torch_like(b"\x80\x05garbage"), _torch_like(pickle.dumps([1, 2])),
     _torch_like(b"c__builtin__\neval\n(S'1'\ntR.")],
    ids=["not-zip", "bad-pickle", "not-dict", "global"],
)  # fmt: skip
def test_a_bad_model_file_is_read_and_logged_once_per_version(
    tmp_path: Path, payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "runs" / "Pong"
    (run / "checkpoints").mkdir(parents=True)
    bad = run / "checkpoints" / "ckpt-000000001.pt"
    bad.write_bytes(payload if payload.startswith(b"ATR") else frame(payload))
    reads: list[Path] = []
    real = registry.read_metadata
    monkeypatch.setattr(registry, "read_metadata", lambda p: (reads.append(p), real(p))[1])
    reg = ModelRegistry(Store.open(tmp_path / "atari.db"))
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):  # five health checks
            assert reg.update("Pong", run) == []
    assert reads == [bad.absolute()]
    assert len([e for e in logs if e["log_level"] in ("warning", "error")]) == 1, logs
    # A new version of the file (the trainer replaced it) is read again.
    os.utime(bad, ns=(1, 1))
    reg.update("Pong", run)
    assert len(reads) == 2
