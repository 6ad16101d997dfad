"""The one contract file: every hook a plugin may implement.

Plugins are modules named by an entry point in the ``lmcache.plugins`` group. They
implement any of the hooks below with :data:`hookimpl`::

    from lmcache_core.plugin import L2AdapterSpec, hookimpl

    @hookimpl
    def lmcache_register_l2_adapters():
        return [L2AdapterSpec(name="fs", factory=build_fs, config_model=FSConfig)]

Call semantics shared by every registration hook:

* **All results are collected.** The registry calls each plugin's implementation
  on its own (never ``firstresult``), so a spec is always attributed to the
  distribution that returned it.
* Each implementation returns a sequence (list or tuple) of spec records of the
  hook's kind, or ``None`` for "nothing".
* **Errors**: if an implementation raises, or returns anything other than specs of
  the right kind, that whole plugin is marked *broken*: its specs are dropped, a
  warning is logged, and it is listed with the error. In strict mode
  (``LMCACHE_PLUGINS_STRICT=1``, on in tests and CI) the registry raises
  :class:`~lmcache_core.errors.PluginLoadError` instead. If configuration selects
  a name that no healthy plugin provides while a plugin is broken, start-up fails
  and names the broken plugin.
* A name registered for the same kind by two distributions is a conflict: both
  are listed as such, selecting the name fails naming both distributions, and
  strict mode fails at load.
* Hooks are called once per registry (one registry per server process or CLI
  invocation), never on the data path.

Compatibility policy: hooks are only ever added. A hook's name, arguments and the
meaning of its result never change within a major version; new optional spec
fields get defaults, so existing plugins keep working.
"""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

from lmcache_core.plugin.specs import (
    CliCommandSpec,
    EngineSpec,
    EvictionPolicySpec,
    HttpRouterSpec,
    L2AdapterSpec,
    PluginKind,
    PrefetchPolicySpec,
    StorePolicySpec,
    SubscriberSpec,
)

PROJECT_NAME = "lmcache"
"""The pluggy project name; hook implementations use the ``lmcache_`` prefix."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def lmcache_register_engines() -> Sequence[EngineSpec] | None:
    """Register cache engines, selected by ``--engine-type``.

    ``factory(context)`` receives the server's engine context (configuration,
    storage manager, hasher) and returns the engine object the request server
    dispatches to.

    Returns:
        Engine specs; all implementations' results are collected. A raising
        implementation marks its plugin broken (strict mode: load fails).
    """


@hookspec
def lmcache_register_eviction_policies() -> Sequence[EvictionPolicySpec] | None:
    """Register eviction policies, selected by ``--eviction-policy``.

    ``factory(config)`` receives the validated eviction settings and returns a
    policy object used by the L1 (or an L2) eviction controller.

    Returns:
        Eviction policy specs; all results are collected. A raising
        implementation marks its plugin broken (strict mode: load fails).
    """


@hookspec
def lmcache_register_store_policies() -> Sequence[StorePolicySpec] | None:
    """Register L2 store policies, selected by ``--l2-store-policy``.

    ``factory(config)`` returns a policy that decides, for a batch of keys just
    committed to L1, which adapters receive them and whether L1 keeps them.

    Returns:
        Store policy specs; all results are collected. A raising implementation
        marks its plugin broken (strict mode: load fails).
    """


@hookspec
def lmcache_register_prefetch_policies() -> Sequence[PrefetchPolicySpec] | None:
    """Register L2 prefetch policies, selected by ``--l2-prefetch-policy``.

    ``factory(config)`` returns a policy that picks the adapter each L2 hit is
    loaded from and whether the loaded copy stays in L1.

    Returns:
        Prefetch policy specs; all results are collected. A raising
        implementation marks its plugin broken (strict mode: load fails).
    """


@hookspec
def lmcache_register_l2_adapters() -> Sequence[L2AdapterSpec] | None:
    """Register L2 adapter types, selected by the ``type`` of ``--l2-adapter``.

    ``config_model`` validates the adapter JSON (unknown fields rejected);
    ``factory(config, context)`` builds the adapter from the validated model.

    Returns:
        L2 adapter specs; all results are collected. A raising implementation
        marks its plugin broken (strict mode: load fails).
    """


@hookspec
def lmcache_register_subscribers() -> Sequence[SubscriberSpec] | None:
    """Register observability subscribers of the event bus.

    Every registered subscriber whose category is enabled (and whose
    ``enabled_when`` predicate accepts the configuration) is built at start-up,
    after the data path, with ``factory(context)``, where ``context`` is a
    :class:`~lmcache_core.observability.subscribers.SubscriberContext`. The
    result must satisfy :class:`~lmcache_core.observability.bus.Subscriber`
    (``name``, ``event_types``, ``on_event``, ``close``). A factory that raises
    stops start-up with the subscriber named. At run time, events reach it on
    the bus's drain thread; its exceptions are isolated, counted per
    subscriber and logged (rate limited); they never reach the publisher.

    Returns:
        Subscriber specs; all results are collected. A raising implementation
        marks its plugin broken (strict mode: load fails).
    """


@hookspec
def lmcache_register_http_routers() -> Sequence[HttpRouterSpec] | None:
    """Register extra routers for the HTTP frontend.

    ``factory(context)`` returns a ``fastapi.APIRouter`` mounted under the
    spec's ``prefix`` when the HTTP app is created.

    Returns:
        Router specs; all results are collected. A raising implementation marks
        its plugin broken (strict mode: load fails).
    """


@hookspec
def lmcache_register_cli_commands() -> Sequence[CliCommandSpec] | None:
    """Register sub-commands of the ``lmcache`` command line.

    ``factory()`` returns a ``typer.Typer`` (a command group) or a function (a
    single command). A name that clashes with a core command is a conflict.

    Returns:
        CLI command specs; all results are collected. A raising implementation
        marks its plugin broken (strict mode: load fails).
    """


REGISTRATION_HOOKS: dict[PluginKind, str] = {
    PluginKind.ENGINE: "lmcache_register_engines",
    PluginKind.EVICTION_POLICY: "lmcache_register_eviction_policies",
    PluginKind.STORE_POLICY: "lmcache_register_store_policies",
    PluginKind.PREFETCH_POLICY: "lmcache_register_prefetch_policies",
    PluginKind.L2_ADAPTER: "lmcache_register_l2_adapters",
    PluginKind.SUBSCRIBER: "lmcache_register_subscribers",
    PluginKind.HTTP_ROUTER: "lmcache_register_http_routers",
    PluginKind.CLI_COMMAND: "lmcache_register_cli_commands",
}
"""Which hook registers which kind; the registry walks this table."""
