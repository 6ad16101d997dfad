"""Running upstream LMCache 0.5.6's drivers in the compat interpreters (shared by tests/compat).

Each ``drive_upstream_*.py`` runs under an interpreter with upstream ``lmcache``
installed and prints one JSON line last. ``LMCACHE_COMPAT_PYTHON`` names that
interpreter, ``LMCACHE_COMPAT_NIXL_PYTHON`` one that also has NIXL (``nox -s
compat`` builds both); the tests needing one are skipped, saying so, without it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

COMPAT_PYTHON = os.environ.get("LMCACHE_COMPAT_PYTHON", "")
"""An interpreter with ``lmcache==0.5.6`` (empty: the compat tests are skipped)."""
COMPAT_NIXL_PYTHON = os.environ.get("LMCACHE_COMPAT_NIXL_PYTHON", "")
"""An interpreter with ``lmcache==0.5.6`` and NIXL (empty: the NIXL compat tests are skipped)."""

needs_compat_python = pytest.mark.skipif(
    not COMPAT_PYTHON, reason="set LMCACHE_COMPAT_PYTHON (nox -s compat) to run it"
)
needs_compat_nixl_python = pytest.mark.skipif(
    not COMPAT_NIXL_PYTHON, reason="set LMCACHE_COMPAT_NIXL_PYTHON (nox -s compat) to run it"
)

OUTPUT_TAIL = 4000
"""How many characters of a failed driver's stdout and stderr an assertion shows."""


def driver_env() -> dict[str, str]:
    """This environment without ``LMCACHE_*`` variables, which would configure upstream."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}


def last_json_line(stdout: str) -> Any:
    """The report a driver printed: its output's last line, parsed as JSON."""
    return json.loads(stdout.strip().splitlines()[-1])


def run_driver(
    driver: Path, *args: str, python: str = COMPAT_PYTHON, timeout: float = 300.0
) -> dict[str, Any]:
    """Run ``driver`` with ``args`` under ``python`` and return its JSON report.

    Raises:
        AssertionError: The driver exited non-zero (the message holds its output's tail).
        subprocess.TimeoutExpired: It ran past ``timeout`` seconds (and was killed).
    """
    done = subprocess.run(
        [python, str(driver), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=driver_env(),
        check=False,
    )
    assert done.returncode == 0, done.stdout[-OUTPUT_TAIL:] + done.stderr[-OUTPUT_TAIL:]
    report: dict[str, Any] = last_json_line(done.stdout)
    return report
