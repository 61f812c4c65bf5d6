"""The diagram in docs/autoscaler.md is the one the real machine draws."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from daemon.autoscaler import diagram


def test_committed_diagram_matches_the_machine() -> None:
    assert diagram.committed() == diagram.block(), (
        "docs/autoscaler.md is stale; run: python -m daemon.autoscaler.diagram --write"
    )


def test_diagram_has_every_state_and_automatic_edge() -> None:
    text = diagram.mermaid(("light", "medium", "heavy"))
    for edge in (
        "light --> medium: promote",
        "medium --> heavy: promote",
        "heavy --> fallback: fall_back",
        "fallback --> light: recover",
    ):
        assert edge in text, edge
    # One rung down is a shed edge (sustained pressure) besides the pin.
    assert "heavy --> medium: shed [is_under_pressure & !is_pinned] | pin" in text
    assert "medium --> light: shed" in text and "light --> fallback: fall_back" in text


def test_write_refreshes_a_stale_copy(tmp_path: Path) -> None:
    doc = tmp_path / "autoscaler.md"
    doc.write_text(f"intro\n{diagram.BEGIN}\nold\n{diagram.END}\noutro\n", encoding="utf-8")
    assert diagram.write(doc) is True
    assert diagram.committed(doc) == diagram.block()
    assert doc.read_text(encoding="utf-8").startswith("intro\n")
    assert diagram.write(doc) is False


def test_module_prints_the_diagram() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "daemon.autoscaler.diagram"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert out.strip() == diagram.mermaid()
