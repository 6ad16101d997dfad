"""Chaos tests: processes killed and restarted under load (see ``harness.py``)."""
