"""The event bus inside a really started server: its flags and its place in /status."""

from __future__ import annotations

import httpx
import pytest

from tests.server_process import running_server

# Starts real servers (seconds each): outside the quick loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

BASE = ("--l1-size-gb", "0.25", "--eviction-policy", "LRU")


def test_the_bus_runs_with_the_configured_queue_size() -> None:
    with running_server(*BASE, "--event-bus-queue-size", "123") as (_, url):
        bus = httpx.get(f"{url}/status").json()["event_bus"]
        assert bus["enabled"] is True
        assert bus["queue_size"] == 123
        assert bus["dropped"] == 0
        health = httpx.get(f"{url}/healthcheck").json()["components"]["event_bus"]
        assert health["ok"] is True


def test_disable_observability_turns_the_bus_off() -> None:
    with running_server(*BASE, "--disable-observability") as (_, url):
        bus = httpx.get(f"{url}/status").json()["event_bus"]
        assert bus["enabled"] is False
        assert bus["subscribers"] == []
        health = httpx.get(f"{url}/healthcheck").json()["components"]["event_bus"]
        assert health == {"ok": True, "detail": "disabled (--disable-observability)"}
