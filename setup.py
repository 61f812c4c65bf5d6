"""Packages of the wheel, and the two data folders mapped into it.

The customer's top-level ``profiles/`` and ``systemd/`` stay the one source: they are mapped
(not copied in git) to ``daemon/shipped/profiles`` and ``daemon/shipped/systemd`` in the wheel,
where ``daemon/resources.py`` finds them with importlib.resources. Everything else is in
pyproject.toml.
"""

from setuptools import find_packages, setup

SHIPPED = {"daemon.shipped.profiles": "profiles", "daemon.shipped.systemd": "systemd"}

setup(
    packages=find_packages(include=["daemon", "daemon.*", "trainer", "trainer.*"]) + list(SHIPPED),
    package_dir=SHIPPED,
)
