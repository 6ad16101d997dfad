"""The environment a runtime plugin starts with.

A copy of the server's environment plus:

* ``LMCACHE_RUNTIME_PLUGIN_CONFIG``: the server configuration as JSON, secrets
  masked exactly as ``--dry-run`` and ``/status`` mask them, plus
  ``runtime_plugin_extra_config`` (where upstream plugins look for it) and
  ``server`` (instance id, HTTP URL, pid);
* ``LMCACHE_RUNTIME_PLUGIN_EXTRA_CONFIG``: the ``--runtime-plugin-config`` object
  as JSON (the variable upstream's help text promises but never sets);
* role, worker count and worker id (``""``, ``1``, ``0`` in MP mode), the legacy
  ``LMCACHE_PLUGIN_*`` duplicates, ``PYTHONUNBUFFERED=1``;
* the plugin's name, the server's HTTP URL, instance id and pid.

The extra config is not masked: the plugin is the audience it was written for
(an API token for the plugin's own endpoint belongs there).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from lmcache_core.config.server import ServerConfig
from lmcache_core.errors import StartupError

ENV_CONFIG = "LMCACHE_RUNTIME_PLUGIN_CONFIG"
ENV_EXTRA_CONFIG = "LMCACHE_RUNTIME_PLUGIN_EXTRA_CONFIG"
ENV_ROLE = "LMCACHE_RUNTIME_PLUGIN_ROLE"
ENV_WORKER_COUNT = "LMCACHE_RUNTIME_PLUGIN_WORKER_COUNT"
ENV_WORKER_ID = "LMCACHE_RUNTIME_PLUGIN_WORKER_ID"
ENV_NAME = "LMCACHE_RUNTIME_PLUGIN_NAME"
ENV_SERVER_URL = "LMCACHE_RUNTIME_PLUGIN_SERVER_URL"
ENV_INSTANCE_ID = "LMCACHE_RUNTIME_PLUGIN_INSTANCE_ID"
ENV_SERVER_PID = "LMCACHE_RUNTIME_PLUGIN_SERVER_PID"
LEGACY_PREFIX = "LMCACHE_PLUGIN_"
"""Upstream's older names: ``LMCACHE_PLUGIN_{ROLE,CONFIG,WORKER_COUNT,WORKER_ID}``."""

MAX_VARIABLE_BYTES = 96 * 1024
"""Linux refuses to exec with one environment string over 128 KiB (MAX_ARG_STRLEN)."""

_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def server_http_url(host: str, port: int) -> str:
    """The URL a local process reaches the HTTP frontend at (wildcards become loopback)."""
    host = _WILDCARD_HOSTS.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def plugin_config_document(config: ServerConfig, *, server_pid: int) -> dict[str, Any]:
    """The JSON document of ``LMCACHE_RUNTIME_PLUGIN_CONFIG``.

    Its keys: the flag groups as ``/status`` shows them (``mp``, ``http``, ``l1``,
    ...), ``runtime_plugin_extra_config`` and ``server``.
    """
    document = config.public_dict()
    document["runtime_plugin_extra_config"] = dict(config.mp.runtime_plugin_config)
    document["server"] = {
        "instance_id": config.mp.instance_id,
        "http_url": server_http_url(config.http.http_host, config.http.http_port),
        "pid": server_pid,
    }
    return document


def _checked_json(value: Any, variable: str) -> str:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > MAX_VARIABLE_BYTES:
        raise StartupError(
            f"--runtime-plugin-config: {variable} would be {len(text.encode())} bytes, over the "
            f"{MAX_VARIABLE_BYTES}-byte limit of one environment variable"
        )
    return text


class PluginEnvironment:
    """Builds each plugin's environment from one server configuration.

    Args:
        config: The server configuration.
        base: The environment to copy (default: this process's, read at each build).
        server_pid: The pid plugins are told the server has (default: this process).

    Raises:
        StartupError: A JSON variable would be too large to pass.
    """

    def __init__(
        self,
        config: ServerConfig,
        base: Mapping[str, str] | None = None,
        server_pid: int | None = None,
    ) -> None:
        pid = os.getpid() if server_pid is None else server_pid
        self._base = base
        self._config_json = _checked_json(
            plugin_config_document(config, server_pid=pid), ENV_CONFIG
        )
        self._extra_json = _checked_json(dict(config.mp.runtime_plugin_config), ENV_EXTRA_CONFIG)
        self._fixed = {
            ENV_CONFIG: self._config_json,
            ENV_EXTRA_CONFIG: self._extra_json,
            ENV_ROLE: "",
            ENV_WORKER_COUNT: "1",
            ENV_WORKER_ID: "0",
            ENV_SERVER_URL: server_http_url(config.http.http_host, config.http.http_port),
            ENV_INSTANCE_ID: config.mp.instance_id,
            ENV_SERVER_PID: str(pid),
            "PYTHONUNBUFFERED": "1",
        }
        for legacy in ("ROLE", "CONFIG", "WORKER_COUNT", "WORKER_ID"):
            self._fixed[LEGACY_PREFIX + legacy] = self._fixed[f"LMCACHE_RUNTIME_PLUGIN_{legacy}"]

    def for_plugin(self, name: str) -> dict[str, str]:
        """The complete environment of the plugin called ``name``."""
        env = dict(os.environ if self._base is None else self._base)
        env.update(self._fixed)
        env[ENV_NAME] = name
        return env
