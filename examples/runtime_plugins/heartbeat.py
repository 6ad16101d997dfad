#!/usr/bin/env python3
r"""Heartbeat: a runtime plugin that posts a summary of the server's /status to a URL.

Configure it through ``--runtime-plugin-config``::

    lmcache server --l1-size-gb 1 --eviction-policy LRU \
        --runtime-plugin-locations examples/runtime_plugins/heartbeat.py \
        --runtime-plugin-config '{"heartbeat_url": "http://collector:5000/hb", "interval_s": 10}'

Keys: ``heartbeat_url`` (required), ``interval_s`` (default 10), ``timeout_s``
(default 5, per HTTP request), ``full_status`` (default false: post the whole
``/status`` document instead of a summary).

Every ``interval_s`` it reads ``/status`` and posts a JSON summary; while the
server is not answering yet (it starts before the HTTP frontend) it waits
and posts nothing. It exits 0 on SIGTERM or SIGINT, and when the server
process is gone; a configuration error exits 2 (which the launcher treats as a
crash: restarted a few times, then marked failed). Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from types import FrameType
from typing import Any

stop = threading.Event()


def on_signal(signum: int, _frame: FrameType | None) -> None:
    """Ask the main loop to finish its current step and exit."""
    stop.set()


def log(message: str) -> None:
    """One line on stderr; the launcher forwards it to the server log."""
    print(message, file=sys.stderr, flush=True)


def load_settings() -> dict[str, Any]:
    """The extra config, from its own variable or, as upstream nests it, the config JSON."""
    raw = os.environ.get("LMCACHE_RUNTIME_PLUGIN_EXTRA_CONFIG")
    if raw is None:
        config = json.loads(os.environ.get("LMCACHE_RUNTIME_PLUGIN_CONFIG", "{}"))
        settings: dict[str, Any] = config.get("runtime_plugin_extra_config", {})
    else:
        settings = json.loads(raw)
    url = settings.get("heartbeat_url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"heartbeat_url must be an http(s) URL, got {url!r}")
    for key, default in (("interval_s", 10.0), ("timeout_s", 5.0)):
        value = settings.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{key} must be a positive number, got {value!r}")
        settings[key] = float(value)
    return settings


def server_url() -> str:
    """The server's HTTP URL (the launcher passes it; otherwise built from the config)."""
    url = os.environ.get("LMCACHE_RUNTIME_PLUGIN_SERVER_URL")
    if url:
        return url.rstrip("/")
    http = json.loads(os.environ.get("LMCACHE_RUNTIME_PLUGIN_CONFIG", "{}")).get("http", {})
    host = http.get("http_host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{host}:{http.get('http_port', 8080)}"


def server_gone() -> bool:
    """Whether the server that launched us has exited (we were re-parented)."""
    pid = os.environ.get("LMCACHE_RUNTIME_PLUGIN_SERVER_PID")
    return pid is not None and pid.isdigit() and os.getppid() != int(pid)


def summarize(status: dict[str, Any], sequence: int) -> dict[str, Any]:
    """The heartbeat body: identity, uptime, component health, L1 use, plugin states."""
    components = status.get("components", {})
    data_path = status.get("data_path") or {}
    return {
        "instance_id": status.get("instance_id"),
        "version": status.get("version"),
        "sequence": sequence,
        "sent_at": time.time(),
        "uptime_seconds": status.get("uptime_seconds"),
        "healthy": all(c.get("ok") for c in components.values()),
        "components": {name: c.get("ok") for name, c in components.items()},
        "l1": data_path.get("l1"),
        "runtime_plugins": {
            p.get("name"): p.get("state") for p in status.get("runtime_plugins", [])
        },
    }


def fetch_status(base: str, timeout: float) -> dict[str, Any] | None:
    """``/status`` as JSON, or ``None`` while the server does not answer."""
    try:
        with urllib.request.urlopen(f"{base}/status", timeout=timeout) as response:
            document: dict[str, Any] = json.loads(response.read())
            return document
    except (OSError, ValueError):
        return None


def post(url: str, body: dict[str, Any], timeout: float) -> None:
    """POST ``body`` as JSON; raises ``OSError`` when the receiver does not take it."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


def main() -> int:
    """Post heartbeats until told to stop."""
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        settings = load_settings()
    except ValueError as exc:
        log(f"heartbeat: bad configuration: {exc}")
        return 2
    base, target = server_url(), settings["heartbeat_url"]
    interval, timeout = settings["interval_s"], settings["timeout_s"]
    log(f"heartbeat: {base}/status -> {target} every {interval:g} s")
    sequence, server_up, receiver_ok = 0, False, True
    while not stop.is_set():
        if server_gone():
            log("heartbeat: the server is gone; exiting")
            return 0
        status = fetch_status(base, timeout)
        if status is None:
            if server_up:
                log("heartbeat: the server stopped answering; waiting")
            server_up = False
            stop.wait(min(interval, 0.5))  # poll faster until the server is up
            continue
        server_up = True
        sequence += 1
        body = status if settings.get("full_status") else summarize(status, sequence)
        try:
            post(target, body, timeout)
            if not receiver_ok:
                log("heartbeat: the receiver accepts heartbeats again")
            receiver_ok = True
        except (OSError, ValueError) as exc:
            if receiver_ok:  # one line per outage, not one per beat
                log(f"heartbeat: cannot post to {target}: {exc}")
            receiver_ok = False
        stop.wait(interval)
    log("heartbeat: stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
