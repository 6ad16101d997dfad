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
* Implementations are plain ``@hookimpl`` functions: the registry calls each one
  itself, so pluggy's ordering and wrapping options (``tryfirst``, ``trylast``,
  ``wrapper``, ``hookwrapper``) would be silently meaningless; a plugin that uses
  them is rejected at load (marked broken; strict mode: load fails).

Each hook's docstring names its factory's typed signature on a ``Factory:`` line
(the type of the spec's ``factory`` field, :mod:`lmcache_core.plugin.factories`);
``tests/plugin/test_docs_plugins.py`` keeps those lines, the types and
``docs/plugins.md`` in step.

Compatibility policy: hooks are only ever added. A hook's name, arguments and the
meaning of its result never change within a major version; new optional spec
fields get defaults, so existing plugins keep working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pluggy

from lmcache_core.plugin.specs import (
    CliCommandSpec,
    EngineSpec,
    EvictionPolicySpec,
    HttpRouterSpec,
    L2AdapterSpec,
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

    Factory: ``Callable[[EngineContext], Engine]``

    Built once at start-up, after L1 and L2, with an
    :class:`~lmcache_core.engine.contract.EngineContext` (configuration,
    registry, selection, L1, token-hash cache, L2 tier, event bus); the returned
    :class:`~lmcache_core.engine.contract.Engine` gives the request handlers.

    Returns:
        Engine specs; all implementations' results are collected. A raising
        implementation marks its plugin broken (strict mode: load fails).
    """


@hookspec
def lmcache_register_eviction_policies() -> Sequence[EvictionPolicySpec] | None:
    """Register eviction policies, selected by ``--eviction-policy``.

    Factory: ``Callable[[EvictionSettings], EvictionPolicy]``

    Built once for L1 and once per ``--l2-adapter`` with an ``eviction`` block,
    with that tier's validated :class:`~lmcache_core.storage.eviction.EvictionSettings`.

    Returns:
        Eviction policy specs; all results are collected. A raising
        implementation marks its plugin broken (strict mode: load fails).
    """


@hookspec
def lmcache_register_store_policies() -> Sequence[StorePolicySpec] | None:
    """Register L2 store policies, selected by ``--l2-store-policy``.

    Factory: ``Callable[[], StorePolicy]``

    Built once, with no arguments, when at least one ``--l2-adapter`` is
    configured; the policy decides, for a batch of keys just committed to L1,
    which adapters receive them and whether L1 keeps them.

    Returns:
        Store policy specs; all results are collected. A raising implementation
        marks its plugin broken (strict mode: load fails).
    """


@hookspec
def lmcache_register_prefetch_policies() -> Sequence[PrefetchPolicySpec] | None:
    """Register L2 prefetch policies, selected by ``--l2-prefetch-policy``.

    Factory: ``Callable[[], PrefetchPolicy]``

    Built once, with no arguments, when at least one ``--l2-adapter`` is
    configured; the policy picks the adapter each L2 hit is loaded from and
    whether the loaded copy stays in L1.

    Returns:
        Prefetch policy specs; all results are collected. A raising
        implementation marks its plugin broken (strict mode: load fails).
    """


@hookspec
def lmcache_register_l2_adapters() -> Sequence[L2AdapterSpec[Any]] | None:
    """Register L2 adapter types, selected by the ``type`` of ``--l2-adapter``.

    Factory: ``Callable[[ConfigT, L2AdapterContext], L2AdapterV1]``

    Built once per ``--l2-adapter``, in cascade order, with the JSON validated by
    the spec's ``config_model`` (unknown fields rejected; ``ConfigT`` is that
    model) and an :class:`~lmcache_core.storage.l2.context.L2AdapterContext`.

    Returns:
        L2 adapter specs; all results are collected. A raising implementation
        marks its plugin broken (strict mode: load fails).
    """


@hookspec
def lmcache_register_subscribers() -> Sequence[SubscriberSpec] | None:
    """Register observability subscribers of the event bus.

    Factory: ``Callable[[SubscriberContext], Subscriber]``

    Every registered subscriber whose category is enabled (and whose
    ``enabled_when`` predicate accepts the configuration) is built at start-up,
    after the data path, with a
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

    Factory: ``Callable[[ServerState], APIRouter]``

    Every registered router is built when the HTTP app is created, with the
    server's read-only :class:`~lmcache_core.state.ServerState`, and
    mounted under the spec's ``prefix``. A factory that raises stops start-up.

    Returns:
        Router specs; all results are collected. A raising implementation marks
        its plugin broken (strict mode: load fails).
    """


@hookspec
def lmcache_register_cli_commands() -> Sequence[CliCommandSpec] | None:
    """Register sub-commands of the ``lmcache`` command line.

    Factory: ``Callable[[], CliCommand]``

    Built, with no arguments, only when the command line names a command that
    is not a core one; the result is a ``typer.Typer`` (added as a command group)
    or a function (added as a single command). A name equal to a core command
    stops the CLI with an error naming it.

    Returns:
        CLI command specs; all results are collected. A raising implementation
        marks its plugin broken (strict mode: load fails).
    """
