"""``atarictl``: the supervisorctl-style client of the daemon."""
