"""pytest plugin shipped with lmcache-core (entry point ``pytest11``).

Plugin authors get these fixtures in their own test suites without importing
anything: a strict plugin registry over the installed distributions.
"""

from __future__ import annotations

import pytest

from lmcache_core.plugin.registry import PluginRegistry


@pytest.fixture
def plugin_registry() -> PluginRegistry:
    """A strict registry of the plugins installed in the test environment."""
    return PluginRegistry(strict=True)
