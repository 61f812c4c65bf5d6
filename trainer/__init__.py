"""Per-game Double-DQN trainer on envpool (``atari-trainer`` / ``python -m trainer``)."""
