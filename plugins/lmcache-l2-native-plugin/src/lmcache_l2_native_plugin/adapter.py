"""Build the ``native_plugin`` adapter: a third-party native client loaded by module path.

``class_name(**adapter_params)`` from ``module_path`` (on ``PYTHONPATH``) is
checked against the native client contract
(:mod:`lmcache_core.storage.l2.native_client`) and wrapped by
:class:`~lmcache_core.storage.l2.native_bridge.NativeClientAdapter`.
"""

from __future__ import annotations

from typing import Any

from lmcache_core.storage.l2.loading import AdapterLoadError, load_class
from lmcache_core.storage.l2.native_bridge import NativeClientAdapter
from lmcache_l2_native_plugin.config import NativePluginAdapterConfig

GIB = 1 << 30
DEFAULT_POLL_INTERVAL_MS = 5
"""``--periodic-notifier-interval-ms``'s default, used when built without a server."""


def poll_interval_ms(context: Any) -> int:
    """``--periodic-notifier-interval-ms`` of the server ``context`` (its default without one)."""
    policies = getattr(getattr(context, "config", None), "l2_policies", None)
    interval = getattr(policies, "periodic_notifier_interval_ms", DEFAULT_POLL_INTERVAL_MS)
    return int(interval)


def build_native_plugin(
    config: NativePluginAdapterConfig, context: Any = None
) -> NativeClientAdapter:
    """Import the client class, build it from ``adapter_params`` and wrap it.

    Args:
        config: The validated ``--l2-adapter`` JSON.
        context: The server context (for ``--periodic-notifier-interval-ms``), or None.

    Raises:
        AdapterLoadError: The module or class cannot be loaded, the constructor
            rejects the params, or the instance lacks a required method.
    """
    _module, client_class = load_class(config.module_path, config.class_name)
    label = f"{config.module_path}.{config.class_name}"
    try:
        client = client_class(**config.adapter_params)
    except Exception as exc:  # a third-party constructor: any failure is a start-up error
        raise AdapterLoadError(f"{label}(**adapter_params) failed: {exc}") from exc
    return NativeClientAdapter(
        client,
        label=label,
        capacity_bytes=int(config.max_capacity_gb * GIB),
        object_format=config.format,
        poll_interval_s=poll_interval_ms(context) / 1000,
        persist=config.persist_enabled,
    )
