"""What the tests share, so no test module imports another:

- ``fake_os``: the fake OS seam (spawn/poll/signal/wait) and a process manager built on it;
- ``profiles``: one profile builder, with the presets the tests start from;
- ``daemon``: the real ``atari-supervisord`` in a temp dir (launch, wait, query, clean kill);
- ``fixtures``: the pytest fixtures over them (loaded by tests/conftest.py);
- ``state``, ``attacks``, ``autoscaler_box``: a populated state dir, socket attacks, and the
  simulated box of the autoscaler tests.
"""
