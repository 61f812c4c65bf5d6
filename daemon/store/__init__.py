"""Durable state in one SQLite file (SQLAlchemy 2.x Core). See ``Store``."""

from daemon.store.store import Store, StoreError

__all__ = ["Store", "StoreError"]
