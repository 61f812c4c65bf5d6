"""The autoscaler: a ``transitions`` state machine over the profile's load levels.

``Autoscaler`` is the daemon's ``LevelSource``; see docs/autoscaler.md for the policy in words.
"""

from daemon.autoscaler.autoscaler import Autoscaler, Decision, PinError
from daemon.autoscaler.boots import BootIdError, BootRecord

__all__ = ["Autoscaler", "BootIdError", "BootRecord", "Decision", "PinError"]
