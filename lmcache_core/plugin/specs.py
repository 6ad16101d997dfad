"""Typed, frozen records that registration hooks return.

A spec names one implementation of one kind (an engine, an eviction policy, an L2
adapter, ...) and says how to build it. The registry resolves configured names to
specs; the server builds each selected spec through the typed builders of
:mod:`lmcache_core.plugin.builders` and then calls the built object directly (no
hook call per chunk). Each kind's ``factory`` has the typed signature of
:mod:`lmcache_core.plugin.factories`, so mypy checks a plugin's factory.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic

from pydantic import BaseModel

from lmcache_core.plugin.factories import (
    CliCommandFactory,
    ConfigT,
    EnabledWhen,
    EngineFactory,
    EvictionPolicyFactory,
    HttpRouterFactory,
    L2AdapterFactory,
    PrefetchPolicyFactory,
    StorePolicyFactory,
    SubscriberFactory,
)
from lmcache_core.plugin.names import check_spec_name, normalize_name


class PluginKind(enum.StrEnum):
    """The kinds of implementation a plugin can register."""

    ENGINE = "engine"
    EVICTION_POLICY = "eviction_policy"
    STORE_POLICY = "store_policy"
    PREFETCH_POLICY = "prefetch_policy"
    L2_ADAPTER = "l2_adapter"
    SUBSCRIBER = "subscriber"
    HTTP_ROUTER = "http_router"
    CLI_COMMAND = "cli_command"


class SubscriberCategory(enum.StrEnum):
    """Which observability switch governs a subscriber.

    ``--disable-metrics`` skips METRICS subscribers, ``--disable-logging`` skips
    LOGGING ones, TRACING ones run only with ``--enable-tracing``, and
    ``--disable-observability`` skips them all.
    """

    METRICS = "metrics"
    LOGGING = "logging"
    TRACING = "tracing"


@dataclass(frozen=True, kw_only=True)
class PluginSpec:
    """Common fields of every spec record.

    Attributes:
        name: The name configuration selects it by, as the reference spells it
            (``LRU``, ``skip_l1``); lookups are case- and separator-insensitive.
            See :func:`~lmcache_core.plugin.names.check_spec_name` for the rule.
        factory: Builds the implementation; every subclass narrows it to its
            kind's signature (:mod:`lmcache_core.plugin.factories`).
        config_model: The pydantic model of the implementation's own options (the
            JSON of an ``--l2-adapter``, for example), or ``None`` if it has none.
        description: One line for ``lmcache plugins list`` and the docs.
        aliases: Other names that select the same implementation.
        not_implemented: When set, the implementation has not landed yet: the spec
            is listed with this reason and building it raises
            :class:`~lmcache_core.errors.PluginNotImplementedError`.
    """

    kind: ClassVar[PluginKind]

    name: str
    factory: Callable[..., Any]
    config_model: type[BaseModel] | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()
    not_implemented: str | None = None

    def __post_init__(self) -> None:
        for name in (self.name, *self.aliases):
            check_spec_name(type(self).__name__, name)
        if not callable(self.factory):
            raise TypeError(f"{type(self).__name__} {self.name!r}: factory must be callable")
        if self.config_model is not None and not (
            isinstance(self.config_model, type) and issubclass(self.config_model, BaseModel)
        ):
            raise TypeError(
                f"{type(self).__name__} {self.name!r}: config_model must be a pydantic model class"
            )

    @property
    def keys(self) -> tuple[str, ...]:
        """Normalised names (the name first, then aliases) this spec answers to."""
        return tuple(dict.fromkeys(normalize_name(n) for n in (self.name, *self.aliases)))


@dataclass(frozen=True, kw_only=True)
class EngineSpec(PluginSpec):
    """A cache engine (``--engine-type``).

    Attributes:
        transfer_modes: The ``--supported-transfer-mode`` values the engine works
            with; the configuration is rejected for any other.
    """

    kind: ClassVar[PluginKind] = PluginKind.ENGINE
    factory: EngineFactory
    transfer_modes: frozenset[str] = frozenset({"lmcache_driven", "engine_driven", "auto"})


@dataclass(frozen=True, kw_only=True)
class EvictionPolicySpec(PluginSpec):
    """An eviction policy (``--eviction-policy`` and the L2 ``eviction`` blocks).

    ``factory(settings)`` receives the tier's :class:`EvictionSettings`.
    """

    kind: ClassVar[PluginKind] = PluginKind.EVICTION_POLICY
    factory: EvictionPolicyFactory


@dataclass(frozen=True, kw_only=True)
class StorePolicySpec(PluginSpec):
    """An L2 store policy (``--l2-store-policy``).

    ``factory()`` takes no arguments: a store policy decides from the batch it is
    given (``targets(adapter_count)``), not from configuration.
    """

    kind: ClassVar[PluginKind] = PluginKind.STORE_POLICY
    factory: StorePolicyFactory


@dataclass(frozen=True, kw_only=True)
class PrefetchPolicySpec(PluginSpec):
    """An L2 prefetch policy (``--l2-prefetch-policy``).

    ``factory()`` takes no arguments: a prefetch policy decides from the holders
    it is given (``choose(holders)``), not from configuration.
    """

    kind: ClassVar[PluginKind] = PluginKind.PREFETCH_POLICY
    factory: PrefetchPolicyFactory


@dataclass(frozen=True, kw_only=True)
class L2AdapterSpec(PluginSpec, Generic[ConfigT]):
    """An L2 storage adapter type (the ``type`` of an ``--l2-adapter`` JSON).

    ``config_model`` is required: every adapter JSON is validated against it, so
    unknown fields and bad values fail at start-up with the field named.
    ``factory(config, context)`` receives that validated model (so mypy checks
    that the factory takes the spec's own model) and an
    :class:`~lmcache_core.storage.l2.context.L2AdapterContext`.
    """

    kind: ClassVar[PluginKind] = PluginKind.L2_ADAPTER
    factory: L2AdapterFactory[ConfigT]
    config_model: type[ConfigT]  # narrowed: required here

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.config_model is None:
            raise TypeError(f"L2AdapterSpec {self.name!r}: config_model is required")


@dataclass(frozen=True, kw_only=True)
class SubscriberSpec(PluginSpec):
    """An observability subscriber of the event bus.

    Attributes:
        category: The switch that governs it (see :class:`SubscriberCategory`).
        enabled_when: Optional predicate over the server configuration; for
            example the lookup-hash log runs only when ``--lookup-hash-log-dir``
            is set. ``None`` means "whenever its category is on".
    """

    kind: ClassVar[PluginKind] = PluginKind.SUBSCRIBER
    factory: SubscriberFactory
    category: SubscriberCategory = SubscriberCategory.LOGGING
    enabled_when: EnabledWhen | None = field(default=None, compare=False)


@dataclass(frozen=True, kw_only=True)
class HttpRouterSpec(PluginSpec):
    """A FastAPI router mounted on the HTTP frontend.

    ``factory(state)`` receives the server's read-only
    :class:`~lmcache_core.state.ServerState` and returns a
    ``fastapi.APIRouter``; it is mounted under ``prefix``.
    """

    kind: ClassVar[PluginKind] = PluginKind.HTTP_ROUTER
    factory: HttpRouterFactory
    prefix: str = ""


@dataclass(frozen=True, kw_only=True)
class CliCommandSpec(PluginSpec):
    """A sub-command of the ``lmcache`` CLI.

    ``factory()`` returns a ``typer.Typer`` (added as a command group named
    ``name``) or a plain function (added as a command named ``name``).
    """

    kind: ClassVar[PluginKind] = PluginKind.CLI_COMMAND
    factory: CliCommandFactory


def pending_factory(what: str, reason: str) -> Callable[..., Any]:
    """A factory for a plugin whose behaviour lands later: it always fails loudly.

    The registry refuses to build a spec with ``not_implemented`` set before it
    calls the factory; this factory is the second line of defence for code that
    calls ``spec.factory`` directly.

    Args:
        what: What the plugin is, for the message (``"L2 adapter 's3'"``).
        reason: Why it is not available yet.
    """
    from lmcache_core.errors import PluginNotImplementedError

    def factory(*_args: Any, **_kwargs: Any) -> Any:
        raise PluginNotImplementedError(f"{what} is not implemented yet: {reason}")

    return factory
