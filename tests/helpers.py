"""Shared helpers of the configuration and ``lmcache server`` flag tests.

The reference tables below are copied by hand from the configuration reference
(``configuration-reference.txt``), not derived from the config models, so the
tests fail when the implementation drifts from the documented behaviour.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lmcache_core.cli.main import main

ENV_PREFIX = "LMCACHE_"
STRICT_ENV = "LMCACHE_PLUGINS_STRICT"

REQUIRED_VALUES = {"l1_size_gb": 1, "eviction_policy": "LRU"}
"""The two required flags, as ``load_config`` field values."""

REQUIRED_ARGS = ("--l1-size-gb", "1", "--eviction-policy", "LRU")
"""The two required flags, on the command line."""

UNSET = object()
"""Marks a reference default that is not a fixed value (checked separately)."""

# Panel title -> (attribute of the dry-run "config" document, {flag: reference default}).
# The panels are in the reference's order. "required" flags map to REQUIRED.
REQUIRED = object()
REFERENCE: dict[str, tuple[str, dict[str, Any]]] = {
    "MP Server": (
        "mp",
        {
            "--instance-id": UNSET,  # a fresh UUID v4 per run
            "--host": "localhost",
            "--port": 5555,
            "--chunk-size": 256,
            "--max-workers": 1,
            "--max-gpu-workers": 1,  # inherits --max-workers
            "--max-cpu-workers": 1,  # inherits --max-workers
            "--hash-algorithm": "blake3",
            "--engine-type": "default",
            "--supported-transfer-mode": "auto",
            "--runtime-plugin-locations": [],
            "--runtime-plugin-config": {},  # "{}"
            "--script-allowed-imports": [],
            "--shm-name": None,  # not set
            "--worker-reap-timeout-seconds": 120.0,
            "--worker-registration-grace-seconds": 3600.0,
            # Not in the reference's table: upstream's flag, idle-based here (issue #3).
            "--session-ttl-seconds": 600.0,
            # Not in the reference's table: the bound of every server-side wait (issue 14).
            "--request-deadline-seconds": 8.0,
            "--enable-segmented-prefix": False,
            # Upstream 0.5.6's extra blend flags (the blend engine plugin's own).
            "--enable-dedup-content": False,
            "--enable-blend-reorder": False,
            # Not in the reference table: upstream 0.5.6's KV event log (issue 14 item 5).
            "--kv-event-log-size": 32768,
            # Not in the reference: upstream 0.5.7's API key files (issue 14 item 6).
            "--api-key-file": [],
        },
    ),
    "Lookup Hash Logging": (
        "lookup_hash_log",
        {
            "--lookup-hash-log-dir": "",
            "--lookup-hash-log-rotation-interval": 21600,
            "--lookup-hash-log-rotation-max-size": 104857600,
            "--lookup-hash-log-max-files": 100,
        },
    ),
    "HTTP Frontend": (
        "http",
        {
            "--http-host": "0.0.0.0",
            "--http-port": 8080,
            # Not in the reference: the admin API's token, and upstream's /run_script switch.
            "--http-admin-token": None,
            "--run-script-api-enabled": False,
        },
    ),
    "L1 Memory Manager": (
        "l1",
        {
            "--l1-size-gb": REQUIRED,
            "--l1-use-lazy": True,
            "--l1-init-size-gb": 20,
            "--l1-align-bytes": 4096,
            "--l1-devdax-path": None,
        },
    ),
    "GDS L1 Tier": (
        "gds_l1",
        {
            "--gds-l1-path": None,
            "--gds-l1-use-direct-io": True,
        },
    ),
    "L1 Manager TTLs": (
        "l1_ttl",
        {
            "--l1-write-ttl-seconds": 600,
            "--l1-read-ttl-seconds": 300,
        },
    ),
    "Eviction Policy": (
        "eviction",
        {
            "--eviction-policy": REQUIRED,
            "--eviction-trigger-watermark": 0.8,
            "--eviction-ratio": 0.2,
            # Not in the reference: quotas that survive a restart (issue #14).
            "--quota-state-file": None,  # not set
        },
    ),
    "L2 Policies": (
        "l2_policies",
        {
            "--l2-store-policy": "default",
            "--l2-prefetch-policy": "default",
            "--l2-prefetch-max-in-flight": 8,
            "--periodic-notifier-interval-ms": 5,
        },
    ),
    "L2 Adapters": (
        "l2_adapters",
        {
            "--l2-adapter": [],
        },
    ),
    "Observability": (
        "observability",
        {
            "--disable-observability": False,
            "--disable-metrics": False,
            "--disable-logging": False,
            "--enable-tracing": False,
            "--event-bus-queue-size": 10000,
            "--otlp-endpoint": None,
            "--prometheus-port": 9090,
            "--metrics-sample-rate": 0.01,
        },
    ),
}

NEGATABLE_FLAGS = ("--l1-use-lazy", "--gds-l1-use-direct-io")
"""Booleans the reference spells ``--x / --no-x``."""

REGISTERED_ADAPTER_TYPES = (
    "nixl_store",
    "nixl_store_dynamic",
    "fs",
    "fs_native",
    "mock",
    "mooncake_store",
    "aerospike",
    "s3",
    "resp",
    "plugin",
    "native_plugin",
    "raw_block",
    "dax",
)
"""The reference's "Registered adapter types"."""

MOCK_ADAPTER = {"type": "mock", "max_size_gb": 1, "mock_bandwidth_gb": 10}
"""A valid ``--l2-adapter`` JSON of the in-memory test adapter."""


def field_of(flag: str) -> str:
    """``--l1-size-gb`` -> ``l1_size_gb``."""
    return flag.removeprefix("--").replace("-", "_")


def env_of(flag: str) -> str:
    """``--l1-size-gb`` -> ``LMCACHE_L1_SIZE_GB``."""
    return ENV_PREFIX + field_of(flag).upper()


def all_flags() -> list[tuple[str, str, Any]]:
    """Every reference flag as ``(group attribute, flag, default)``, in order."""
    return [
        (group, flag, default)
        for group, flags in REFERENCE.values()
        for flag, default in flags.items()
    ]


def clear_lmcache_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every ``LMCACHE_*`` variable of the real environment; keep plugins strict."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setenv(STRICT_ENV, "1")


@dataclass
class CliResult:
    """What one ``lmcache`` invocation produced."""

    code: int
    out: str
    err: str

    def json(self) -> dict[str, Any]:
        """The ``--dry-run`` document."""
        return json.loads(self.out)

    def config(self) -> dict[str, Any]:
        """The ``config`` part of the ``--dry-run`` document."""
        return self.json()["config"]

    def assert_usage_error(self, *needles: str) -> str:
        """Exit 2, exactly one ``error: `` line on stderr naming every needle, no traceback."""
        assert self.code == 2, (self.code, self.out, self.err)
        assert "Traceback" not in self.err + self.out
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        line = lines[0]
        assert line.startswith("error: "), line
        for needle in needles:
            assert needle in line, (needle, line)
        return line


def invoke(capsys: pytest.CaptureFixture[str], *args: str) -> CliResult:
    """Run ``lmcache <args>`` in this process, restoring the root logger afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capsys.readouterr()
    try:
        code = main(list(args))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return CliResult(code, out, err)


def dry_run(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """``lmcache server <required flags> <args> --dry-run``; must exit 0; the JSON document."""
    result = invoke(capsys, "server", *REQUIRED_ARGS, *args, "--dry-run")
    assert result.code == 0, result.err
    return result.json()


def lmcache_command() -> list[str]:
    """The installed ``lmcache`` script of this interpreter, or an equivalent."""
    script = shutil.which("lmcache", path=str(Path(sys.executable).parent))
    if script:
        return [script]
    return [sys.executable, "-c", "from lmcache_core.cli.main import main; main()"]


def run_subprocess(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> CliResult:
    """Run ``lmcache <args>`` as a real process, with no inherited ``LMCACHE_*`` variables."""
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    environ[STRICT_ENV] = "1"
    environ["COLUMNS"] = "200"
    environ.update(env or {})
    proc = subprocess.run(
        [*lmcache_command(), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def app_without_data_path(values: dict[str, Any], registry: Any) -> Any:
    """The HTTP app of a server whose data path is not built: its routes, nothing running.

    Args:
        values: ``load_config`` field values.
        registry: The plugin registry to resolve the configuration against.
    """
    from lmcache_core.config.loading import load_config
    from lmcache_core.config.resolution import resolve_plugins
    from lmcache_core.http.app import create_app
    from lmcache_core.lifecycle import Lifecycle
    from lmcache_core.observability.bus import EventBus
    from lmcache_core.server.startup import StartupReport
    from lmcache_core.state import ServerContext, ServerState

    config = load_config(values)
    bus = EventBus(enabled=False)
    context = ServerContext(
        config=config,
        registry=registry,
        selection=resolve_plugins(config, registry),
        report=StartupReport(),
        bus=bus,
        lifecycle=Lifecycle([]),
        state=ServerState(config, bus, None),
    )
    return create_app(context)
