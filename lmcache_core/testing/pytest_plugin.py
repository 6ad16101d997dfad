"""pytest plugin shipped with lmcache-core (entry point ``pytest11``).

Plugin authors get these in their own test suites without importing anything:

* the fixture ``plugin_registry``: a strict plugin registry over the installed
  distributions;
* the option ``--engine-type NAME`` and the fixture ``engine_type``: the engine the
  end-to-end data-path suite's servers run (see
  :mod:`lmcache_core.testing.engine_suite`).
"""

from __future__ import annotations

import pytest

from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.testing.engine_suite import add_engine_option, selected_engine


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--engine-type``."""
    add_engine_option(parser)


@pytest.fixture
def plugin_registry() -> PluginRegistry:
    """A strict registry of the plugins installed in the test environment."""
    return PluginRegistry(strict=True)


@pytest.fixture(scope="session")
def engine_type(pytestconfig: pytest.Config) -> str:
    """The engine named by ``--engine-type`` (or its environment variable, or ``default``)."""
    return selected_engine(pytestconfig)
