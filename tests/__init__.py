"""The test suite. A package so that ``tests.support`` is importable from every test module."""
