"""The atari-supervisor daemon (``atari-supervisord``) and its client ``atarictl``."""
