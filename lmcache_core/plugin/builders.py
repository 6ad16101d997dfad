"""Typed builders: one per plugin kind, from an already resolved spec.

Configuration names are resolved once (:func:`lmcache_core.config.resolution.resolve_plugins`
gives a :class:`~lmcache_core.config.resolution.Selection` of specs); the server
then builds each selected spec here. Nothing is looked up by name a second time,
and each method's argument and result types are the kind's factory signature
(:mod:`lmcache_core.plugin.factories`), so mypy checks both sides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin.factories import ConfigT

if TYPE_CHECKING:
    from fastapi import APIRouter

    from lmcache_core.engine.contract import Engine, EngineContext
    from lmcache_core.observability.bus import Subscriber
    from lmcache_core.observability.subscribers import SubscriberContext
    from lmcache_core.plugin.factories import CliCommand
    from lmcache_core.plugin.registry import PluginRegistry
    from lmcache_core.plugin.specs import (
        CliCommandSpec,
        EngineSpec,
        EvictionPolicySpec,
        HttpRouterSpec,
        L2AdapterSpec,
        PluginSpec,
        PrefetchPolicySpec,
        StorePolicySpec,
        SubscriberSpec,
    )
    from lmcache_core.state import ServerState
    from lmcache_core.storage.eviction import EvictionPolicy, EvictionSettings
    from lmcache_core.storage.l2.adapter import L2AdapterV1
    from lmcache_core.storage.l2.context import L2AdapterContext
    from lmcache_core.storage.l2.policies import PrefetchPolicy, StorePolicy


class PluginBuilder:
    """Builds resolved specs of every kind (``registry.builder``).

    Each method first refuses a spec that is registered but not implemented yet
    (:class:`~lmcache_core.errors.PluginNotImplementedError`, naming the
    distribution), then calls the spec's factory with the kind's arguments.

    Args:
        registry: The registry the specs came from (for the owner in messages).
    """

    def __init__(self, registry: PluginRegistry) -> None:
        self._registry = registry

    def _ready(self, spec: PluginSpec) -> None:
        from lmcache_core.plugin.registry import ensure_implemented

        record = None
        if spec.not_implemented:
            try:
                record = self._registry.owner(spec)
            except KeyError:  # a spec built by hand, not registered: no owner to name
                record = None
        ensure_implemented(spec, record)

    def engine(self, spec: EngineSpec, context: EngineContext) -> Engine:
        """Build the engine ``spec`` with the server's engine context."""
        self._ready(spec)
        return spec.factory(context)

    def eviction_policy(
        self, spec: EvictionPolicySpec, settings: EvictionSettings
    ) -> EvictionPolicy:
        """Build the eviction policy ``spec`` for one tier's ``settings``."""
        self._ready(spec)
        return spec.factory(settings)

    def store_policy(self, spec: StorePolicySpec) -> StorePolicy:
        """Build the L2 store policy ``spec`` (no arguments)."""
        self._ready(spec)
        return spec.factory()

    def prefetch_policy(self, spec: PrefetchPolicySpec) -> PrefetchPolicy:
        """Build the L2 prefetch policy ``spec`` (no arguments)."""
        self._ready(spec)
        return spec.factory()

    def l2_adapter(
        self, spec: L2AdapterSpec[ConfigT], config: ConfigT, context: L2AdapterContext
    ) -> L2AdapterV1:
        """Build one ``--l2-adapter`` from its validated ``config`` and ``context``."""
        self._ready(spec)
        return spec.factory(config, context)

    def subscriber(self, spec: SubscriberSpec, context: SubscriberContext) -> Subscriber:
        """Build the observability subscriber ``spec``."""
        self._ready(spec)
        return spec.factory(context)

    def http_router(self, spec: HttpRouterSpec, state: ServerState) -> APIRouter:
        """Build the HTTP router ``spec`` (mounted by the caller under ``spec.prefix``)."""
        self._ready(spec)
        return spec.factory(state)

    def cli_command(self, spec: CliCommandSpec) -> CliCommand:
        """Build the CLI command ``spec``: a ``typer.Typer`` or a command function."""
        self._ready(spec)
        return spec.factory()
