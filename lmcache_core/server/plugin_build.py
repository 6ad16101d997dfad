"""Build an implementation from the spec the configuration resolved to."""

from __future__ import annotations

from typing import Any

from lmcache_core.plugin.registry import PluginRegistry, ensure_implemented
from lmcache_core.plugin.specs import PluginSpec


def build_from(registry: PluginRegistry, spec: PluginSpec, *args: Any) -> Any:
    """Call ``spec.factory(*args)`` after checking the plugin has landed.

    The spec comes from the :class:`~lmcache_core.config.resolution.Selection`, so
    the name is never resolved a second time.

    Raises:
        PluginNotImplementedError: The plugin is registered but not implemented.
    """
    ensure_implemented(spec, registry.owner(spec))
    return spec.factory(*args)
