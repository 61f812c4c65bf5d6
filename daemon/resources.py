"""The files atari-supervisor ships beside its code: the profiles and the systemd unit.

Their one source is the checkout's top-level ``profiles/`` and ``systemd/`` (the customer's
layout). ``setup.py`` maps both folders into the wheel as ``daemon/shipped/profiles`` and
``daemon/shipped/systemd``, so an installed package (``pip install .``, a wheel) finds them with
importlib.resources wherever it runs. A source checkout (an editable install, or the tree on
``sys.path``) has no ``daemon/shipped`` and reads the top-level folders themselves: nothing is
copied into git twice. Stdlib only (the config schema imports it).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]
SHIPPED = ("profiles", "systemd")


def shipped_dir(name: str) -> Path:
    """The folder ``name`` ("profiles" or "systemd") as the installed package or the checkout
    holds it."""
    if name not in SHIPPED:
        raise ValueError(f"{name!r} is not shipped; one of {', '.join(SHIPPED)}")
    packaged = files("daemon").joinpath("shipped", name)
    # A wheel installs as plain files, so the Traversable is a filesystem path; the daemon needs
    # a real path (it copies the profile, and systemd reads the unit).
    if packaged.is_dir():
        return Path(str(packaged))
    return _CHECKOUT / name
