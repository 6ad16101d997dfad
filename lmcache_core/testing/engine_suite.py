"""Run the core's end-to-end data-path suite against a named engine (the devpi model).

The suite (``tests/data_path/`` of the lmcache-core checkout) starts real servers
and drives them with real clients and CPU workers: round trips, locks, eviction,
quotas, L2 tiers, malformed frames, reaping. Every server it starts runs the
engine named by the pytest option ``--engine-type NAME`` (or the environment
variable :data:`ENGINE_ENV`; default ``default``), which this package's pytest
plugin registers, so an engine plugin passes the same suite as the default engine::

    # in plugins/lmcache-engine-blend/tests/test_data_path_suite.py
    import pytest

    from lmcache_core.testing.engine_suite import run_data_path_suite


    @pytest.mark.slow
    def test_blend_passes_the_data_path_suite() -> None:
        assert run_data_path_suite("blend", "-q") == 0

or from a shell, in the checkout: ``pytest tests/data_path --engine-type blend``.
The suite lives in the checkout, not in the wheel (it is about 4,000 lines of tests
and their fixtures); :func:`data_path_suite` finds it next to an editable install
of lmcache-core, or where :data:`SUITE_ENV` points.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE_OPTION = "--engine-type"
"""The pytest option that names the engine every data-path server runs."""

ENGINE_ENV = "LMCACHE_TEST_ENGINE_TYPE"
"""The environment variable read when the option is not given."""

DEFAULT_ENGINE = "default"
"""The engine the suite runs when neither the option nor the variable names one."""

SUITE_ENV = "LMCACHE_DATA_PATH_SUITE"
"""Where the suite's folder is, for a lmcache-core that is not an editable install."""


def add_engine_option(parser: pytest.Parser) -> None:
    """Register :data:`ENGINE_OPTION` (the pytest plugin of lmcache-core calls this)."""
    parser.addoption(
        ENGINE_OPTION,
        dest="lmcache_engine_type",
        default=None,
        metavar="NAME",
        help=(
            "the engine every server of the data-path suite runs "
            f"(default: ${ENGINE_ENV} or {DEFAULT_ENGINE!r})"
        ),
    )


def selected_engine(config: pytest.Config) -> str:
    """The engine named by the option, else by :data:`ENGINE_ENV`, else the default."""
    chosen = config.getoption("lmcache_engine_type", default=None)
    return str(chosen or os.environ.get(ENGINE_ENV) or DEFAULT_ENGINE)


def engine_server_args(engine: str) -> tuple[str, ...]:
    """The ``lmcache server`` arguments that select ``engine``."""
    return ("--engine-type", engine)


def data_path_suite() -> Path:
    """The folder of the data-path suite.

    Returns:
        :data:`SUITE_ENV` if set, else ``tests/data_path`` of the checkout that
        holds the imported ``lmcache_core`` (an editable install).

    Raises:
        FileNotFoundError: Neither exists (a wheel install without :data:`SUITE_ENV`).
    """
    configured = os.environ.get(SUITE_ENV)
    if configured:
        suite = Path(configured)
    else:
        import lmcache_core

        suite = Path(lmcache_core.__file__).resolve().parents[1] / "tests" / "data_path"
    if not (suite / "conftest.py").is_file():
        raise FileNotFoundError(
            f"no data-path suite at {suite}: install lmcache-core editable from its checkout, "
            f"or set {SUITE_ENV} to the checkout's tests/data_path"
        )
    return suite


def run_data_path_suite(engine: str, *pytest_args: str, timeout: float | None = None) -> int:
    """Run the data-path suite against ``engine`` in a fresh pytest process.

    A fresh process because the suite's session fixtures start servers for the
    whole run, and its conftest must be the root of its own collection. It runs
    in the suite's checkout, so that checkout's pytest settings apply.

    Args:
        engine: The engine plugin's name, as ``--engine-type`` takes it.
        *pytest_args: More pytest arguments (``-q``, ``-k roundtrip``, ``-x``).
        timeout: Seconds before the run is killed (None: no limit).

    Returns:
        pytest's exit status (0: every selected test passed).
    """
    suite = data_path_suite()
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(suite),
        f"{ENGINE_OPTION}={engine}",
        "-p",
        "no:cacheprovider",
        *pytest_args,
    ]
    return subprocess.run(command, cwd=suite.parents[1], check=False, timeout=timeout).returncode
