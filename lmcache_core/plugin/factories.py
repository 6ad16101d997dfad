"""The typed factory signature of every plugin kind.

A spec's ``factory`` field has one of these types, so mypy rejects a plugin whose
factory takes the wrong arguments or returns the wrong thing. The argument and
result types live in the modules that use them; they are imported for type
checking only, so registering a plugin imports neither torch nor the server.

=====================  ===========================================================
kind                   factory
=====================  ===========================================================
engine                 ``(EngineContext) -> Engine``
eviction policy        ``(EvictionSettings) -> EvictionPolicy``
L2 store policy        ``() -> StorePolicy``
L2 prefetch policy     ``() -> PrefetchPolicy``
L2 adapter             ``(validated config, L2AdapterContext) -> L2AdapterV1``
subscriber             ``(SubscriberContext) -> Subscriber``
HTTP router            ``(ServerState) -> fastapi.APIRouter``
CLI command            ``() -> typer.Typer | a command function``
=====================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from pydantic import BaseModel

# typing_extensions (a dependency of pydantic) for PEP 696 defaults on Python 3.11.
from typing_extensions import TypeVar

if TYPE_CHECKING:
    import typer
    from fastapi import APIRouter

    from lmcache_core.config.server import ServerConfig
    from lmcache_core.engine.contract import Engine, EngineContext
    from lmcache_core.observability.bus import Subscriber
    from lmcache_core.observability.subscribers import SubscriberContext
    from lmcache_core.state import ServerState
    from lmcache_core.storage.eviction import EvictionPolicy, EvictionSettings
    from lmcache_core.storage.l2.adapter import L2AdapterV1
    from lmcache_core.storage.l2.context import L2AdapterContext
    from lmcache_core.storage.l2.policies import PrefetchPolicy, StorePolicy

ConfigT = TypeVar("ConfigT", bound=BaseModel, default=BaseModel)
"""An L2 adapter's config model; its spec's factory receives an instance of it.

The default lets code that handles any adapter spec write a bare ``L2AdapterSpec``;
a plugin writes ``L2AdapterSpec[ItsConfig]`` so mypy checks its factory against it.
"""

# String aliases: the names above exist only while type checking.
EngineFactory: TypeAlias = "Callable[[EngineContext], Engine]"
EvictionPolicyFactory: TypeAlias = "Callable[[EvictionSettings], EvictionPolicy]"
StorePolicyFactory: TypeAlias = "Callable[[], StorePolicy]"
PrefetchPolicyFactory: TypeAlias = "Callable[[], PrefetchPolicy]"
L2AdapterFactory: TypeAlias = "Callable[[ConfigT, L2AdapterContext], L2AdapterV1]"
SubscriberFactory: TypeAlias = "Callable[[SubscriberContext], Subscriber]"
HttpRouterFactory: TypeAlias = "Callable[[ServerState], APIRouter]"
CliCommand: TypeAlias = "typer.Typer | Callable[..., Any]"
CliCommandFactory: TypeAlias = "Callable[[], CliCommand]"
EnabledWhen: TypeAlias = "Callable[[ServerConfig], bool]"
"""A subscriber's predicate over the server configuration."""
