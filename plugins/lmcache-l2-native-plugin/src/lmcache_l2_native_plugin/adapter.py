"""Build the ``native_plugin`` adapter: a third-party native client loaded by module path.

``class_name(**adapter_params)`` from ``module_path`` (on ``PYTHONPATH``) is
checked against the native client contract
(:mod:`lmcache_l2_native_plugin.native_client`) and wrapped by
:class:`~lmcache_l2_native_plugin.native_bridge.NativeClientAdapter`.
"""

from __future__ import annotations

from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_core.storage.l2.loading import AdapterLoadError, load_class
from lmcache_l2_native_plugin.config import NativePluginAdapterConfig
from lmcache_l2_native_plugin.native_bridge import NativeClientAdapter

GIB = 1 << 30


def build_native_plugin(
    config: NativePluginAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> NativeClientAdapter:
    """Import the client class, build it from ``adapter_params`` and wrap it.

    Args:
        config: The validated ``--l2-adapter`` JSON.
        context: The adapter context: its ``periodic_notifier_interval_ms`` is how
            often the bridge polls a client without an event fd.

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
        poll_interval_s=context.periodic_notifier_interval_ms / 1000,
        persist=config.persist_enabled,
    )
