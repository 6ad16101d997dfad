"""Load a third-party :class:`~lmcache_core.storage.l2.adapter.L2AdapterV1` by module and class.

Prefer packaging an adapter as a plugin distribution with an entry point (see
``tools/new_plugin.py``); this adapter type exists for upstream's
``{"type": "plugin", "module_path": ..., "class_name": ...}`` configurations.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_core.storage.l2.loading import AdapterLoadError, load_class
from lmcache_l2_plugin.config import PluginAdapterConfig

PluginLoadError = AdapterLoadError
"""The named module or class cannot serve as an L2 adapter; the message says why."""


def _config_class(
    module: Any, adapter_class: type, config: PluginAdapterConfig
) -> type[BaseModel] | None:
    names: list[str | None] = [config.config_class_name] if config.config_class_name else []
    names += [f"{config.class_name}Config", getattr(adapter_class, "config_class_name", None)]
    for name in names:
        if not name:
            continue
        candidate = getattr(module, name, None)
        if candidate is None:
            if name == config.config_class_name:
                raise PluginLoadError(f"{config.module_path} has no class {name!r}")
            continue
        if not (isinstance(candidate, type) and issubclass(candidate, BaseModel)):
            raise PluginLoadError(f"{config.module_path}.{name} is not a pydantic model")
        return candidate
    return None


def build_plugin(
    config: PluginAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> L2AdapterV1:
    """Import ``module_path``, find ``class_name`` and build it from ``adapter_params``.

    With a configuration class (``config_class_name``, ``<class_name>Config`` or the
    class's ``config_class_name`` attribute) the params are validated by it and the
    adapter gets the model; otherwise they are passed as keyword arguments.

    Raises:
        PluginLoadError: The module, class or configuration cannot be used.
    """
    del context
    module, adapter_class = load_class(config.module_path, config.class_name)
    if not issubclass(adapter_class, L2AdapterV1):
        raise PluginLoadError(
            f"{config.module_path}.{config.class_name} is not an L2AdapterV1 subclass"
        )
    config_class = _config_class(module, adapter_class, config)
    # A third-party constructor: its signature is the author's (a model, or keywords).
    construct: Any = adapter_class
    if config_class is None:
        return construct(**config.adapter_params)  # type: ignore[no-any-return]
    try:
        options = config_class.model_validate(config.adapter_params)
    except ValidationError as exc:
        raise PluginLoadError(f"adapter_params: {exc.errors(include_url=False)[0]['msg']}") from exc
    return construct(options)  # type: ignore[no-any-return]
