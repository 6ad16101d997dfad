"""Resolve the plugin names of a configuration against the installed plugins.

This is where ``--engine-type``, ``--eviction-policy``, the L2 policies and every
``--l2-adapter`` JSON meet the registry: names must be registered, and each adapter
JSON is validated by its own plugin's model. Each name is resolved here, once; the
server builds the resulting specs through the typed builders
(``registry.builder``), never looking a name up again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from lmcache_core.config.base import mask_secrets
from lmcache_core.config.server import ServerConfig
from lmcache_core.errors import ConfigError, PluginError
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.plugin.specs import (
    EngineSpec,
    EvictionPolicySpec,
    L2AdapterSpec,
    PluginKind,
    PluginSpec,
    PrefetchPolicySpec,
    StorePolicySpec,
    SubscriberCategory,
    SubscriberSpec,
)

SpecT = TypeVar("SpecT", bound=PluginSpec)


@dataclass(frozen=True)
class ResolvedAdapter:
    """One ``--l2-adapter``: its position in the cascade, plugin and validated config.

    Attributes:
        index: 1-based position in the ``--l2-adapter`` cascade.
        spec: The adapter type's spec.
        config: The adapter JSON validated by ``spec.config_model``.
        eviction_policy: The spec of its ``eviction.eviction_policy``, or None
            when the adapter has no eviction block.
    """

    index: int
    spec: L2AdapterSpec[Any]
    config: BaseModel
    eviction_policy: EvictionPolicySpec | None = None


@dataclass(frozen=True)
class Selection:
    """The plugins a configuration selects, resolved to their specs."""

    engine: EngineSpec
    eviction_policy: EvictionPolicySpec
    store_policy: StorePolicySpec
    prefetch_policy: PrefetchPolicySpec
    adapters: list[ResolvedAdapter] = field(default_factory=list)
    subscribers: list[SubscriberSpec] = field(default_factory=list)

    def describe(self, registry: PluginRegistry) -> dict[str, Any]:
        """JSON-ready summary: each selected plugin with its distribution and status."""

        def entry(spec: PluginSpec) -> dict[str, Any]:
            record = registry.owner(spec)
            return {
                "name": spec.name,
                "distribution": record.distribution,
                "version": record.version,
                "status": "not implemented yet" if spec.not_implemented else "ok",
            }

        return {
            "engine": entry(self.engine),
            "eviction_policy": entry(self.eviction_policy),
            "store_policy": entry(self.store_policy),
            "prefetch_policy": entry(self.prefetch_policy),
            "l2_adapters": [
                {**entry(a.spec), "config": mask_secrets(a.config.model_dump(mode="json"))}
                for a in self.adapters
            ],
            "subscribers": [entry(s) for s in self.subscribers],
        }


def _resolve(registry: PluginRegistry, spec_type: type[SpecT], name: str, flag: str) -> SpecT:
    try:
        spec = registry.resolve(spec_type.kind, name)
    except PluginError as exc:
        raise ConfigError(flag, str(exc)) from None
    # The registry only stores specs of the hook's own type (checked at load).
    assert isinstance(spec, spec_type)
    return spec


def resolve_plugins(config: ServerConfig, registry: PluginRegistry) -> Selection:
    """Resolve every plugin the configuration names.

    Raises:
        ConfigError: A name is unknown or ambiguous, an engine does not support the
            transfer mode, or an adapter JSON fails its plugin's model.
    """
    engine = _resolve(registry, EngineSpec, config.mp.engine_type, "--engine-type")
    if config.mp.supported_transfer_mode not in engine.transfer_modes:
        modes = " or ".join(sorted(engine.transfer_modes))
        raise ConfigError(
            "--supported-transfer-mode",
            f"engine {engine.name!r} needs {modes}, not {config.mp.supported_transfer_mode}",
        )
    return Selection(
        engine=engine,
        eviction_policy=_resolve(
            registry,
            EvictionPolicySpec,
            config.eviction.eviction_policy,
            "--eviction-policy",
        ),
        store_policy=_resolve(
            registry,
            StorePolicySpec,
            config.l2_policies.l2_store_policy,
            "--l2-store-policy",
        ),
        prefetch_policy=_resolve(
            registry,
            PrefetchPolicySpec,
            config.l2_policies.l2_prefetch_policy,
            "--l2-prefetch-policy",
        ),
        adapters=[
            _resolve_adapter(registry, index, raw)
            for index, raw in enumerate(config.l2_adapters.l2_adapter, start=1)
        ],
        subscribers=select_subscribers(config, registry),
    )


def _resolve_adapter(registry: PluginRegistry, index: int, raw: dict[str, Any]) -> ResolvedAdapter:
    flag = f"--l2-adapter #{index}"
    spec: L2AdapterSpec[Any] = _resolve(registry, L2AdapterSpec, raw["type"], flag)
    assert spec.config_model is not None  # enforced by L2AdapterSpec
    try:
        adapter_config = spec.config_model.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "adapter"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown field for adapter type {spec.name!r}"
        raise ConfigError(f"{flag} ({spec.name})", f"{where}: {message}") from None
    eviction = getattr(adapter_config, "eviction", None)
    policy: EvictionPolicySpec | None = None
    if eviction is not None:
        policy = _resolve(
            registry,
            EvictionPolicySpec,
            eviction.eviction_policy,
            f"{flag} ({spec.name}) eviction.eviction_policy",
        )
    return ResolvedAdapter(index=index, spec=spec, config=adapter_config, eviction_policy=policy)


def select_subscribers(config: ServerConfig, registry: PluginRegistry) -> list[SubscriberSpec]:
    """The subscribers the observability switches turn on, in registration order."""
    obs = config.observability
    if obs.disable_observability:
        return []
    enabled = {
        SubscriberCategory.METRICS: not obs.disable_metrics,
        SubscriberCategory.LOGGING: not obs.disable_logging,
        SubscriberCategory.TRACING: obs.enable_tracing,
    }
    selected: list[SubscriberSpec] = []
    for spec in registry.specs(PluginKind.SUBSCRIBER):
        assert isinstance(spec, SubscriberSpec)
        if not enabled[spec.category]:
            continue
        if spec.enabled_when is not None and not spec.enabled_when(config):
            continue
        selected.append(spec)
    return selected
