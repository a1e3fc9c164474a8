"""Helpers for the tests: real mounts (mount.py), real processes (procs.py)
and the test agent (agent.py), a long-lived process driven over JSON lines.

conftest.py keeps only fixtures; tests import helpers from here.
"""
