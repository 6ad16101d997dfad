"""The per-kind source of the plugins ``tools/new_plugin.py`` generates.

Each :class:`Skeleton` holds the implementation module, the registration body
and a test of a small plugin that works as generated (a FIFO eviction policy, a
store policy, ...), so the generated folder installs, loads and passes its own
tests before its author changes anything. Placeholders are ``str.format`` fields:
``{name}`` (the spec name), ``{package}`` (the import package) and ``{title}``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Skeleton:
    """What differs between kinds.

    Attributes:
        prefix: The folder/distribution prefix (``lmcache-<prefix>-<name>``).
        spec: The spec record class.
        hook: The registration hook.
        factory: The factory's name in the implementation module.
        implementation: The implementation module's source.
        test: The body of the kind-specific test (after the shared imports).
        spec_extra: Extra keyword arguments of the spec, as source.
    """

    prefix: str
    spec: str
    hook: str
    factory: str
    implementation: str
    test: str
    spec_extra: str = ""


EVICTION = Skeleton(
    prefix="eviction",
    spec="EvictionPolicySpec",
    hook="lmcache_register_eviction_policies",
    factory="build_policy",
    implementation='''"""The eviction policy ``{name}``: first in, first out (yours here)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from lmcache_core.storage.eviction import EvictionSettings, iter_candidates
from lmcache_core.storage.keys import ObjectKey


class Policy:
    """Evicts keys in the order they were first stored (an ``EvictionPolicy``).

    All calls come from one thread at a time (the L1 manager's lock).
    """

    def __init__(self) -> None:
        self._order: dict[ObjectKey, None] = {{}}

    def on_stored(self, keys: Sequence[ObjectKey]) -> None:
        """Track new keys in prefix order."""
        for key in keys:
            self._order.setdefault(key, None)

    def on_accessed(self, keys: Sequence[ObjectKey]) -> None:
        """FIFO ignores accesses."""

    def on_removed(self, keys: Sequence[ObjectKey]) -> None:
        """Forget deleted or evicted keys."""
        for key in keys:
            self._order.pop(key, None)

    def candidates(self) -> Iterator[ObjectKey]:
        """Oldest first."""
        return iter_candidates(self._order)


def build_policy(settings: EvictionSettings) -> Policy:
    """The spec's factory: ``(EvictionSettings) -> EvictionPolicy``."""
    del settings  # FIFO needs no watermark, ratio or capacity
    return Policy()
''',
    test="""from lmcache_core.storage.eviction import EvictionPolicy, EvictionSettings
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.testing.eviction_conformance import EvictionPolicyConformance


class TestContract(EvictionPolicyConformance):
    \"\"\"The shared rules every eviction policy keeps (the core's conformance suite).\"\"\"

    keeps_prefixes = False  # plain FIFO: a batch's first chunk is also its oldest

    def make_policy(self, settings: EvictionSettings) -> EvictionPolicy:
        return registry().builder.eviction_policy(registered_spec(), settings)


def test_the_policy_is_built_and_evicts_oldest_first() -> None:
    spec = registered_spec()
    policy = registry().builder.eviction_policy(spec, EvictionSettings(0.8, 0.2, 1 << 20))
    assert isinstance(policy, EvictionPolicy)
    keys = [ObjectKey(bytes([i]), "model", 0) for i in range(3)]
    policy.on_stored(keys)
    assert list(policy.candidates()) == keys
""",
)

STORE_POLICY = Skeleton(
    prefix="store-policy",
    spec="StorePolicySpec",
    hook="lmcache_register_store_policies",
    factory="build_policy",
    implementation='''"""The L2 store policy ``{name}`` (replace with yours)."""

from __future__ import annotations

from collections.abc import Sequence


class Policy:
    """Every new key goes to every adapter, and L1 keeps it (a ``StorePolicy``)."""

    keep_in_l1 = True

    def targets(self, adapter_count: int) -> Sequence[int]:
        """Every adapter, in cascade order."""
        return range(adapter_count)


def build_policy() -> Policy:
    """The spec's factory: ``() -> StorePolicy``."""
    return Policy()
''',
    test="""from lmcache_core.storage.l2.policies import StorePolicy


def test_the_policy_is_built() -> None:
    policy = registry().builder.store_policy(registered_spec())
    assert isinstance(policy, StorePolicy)
    assert list(policy.targets(2)) == [0, 1]
""",
)

PREFETCH_POLICY = Skeleton(
    prefix="prefetch-policy",
    spec="PrefetchPolicySpec",
    hook="lmcache_register_prefetch_policies",
    factory="build_policy",
    implementation='''"""The L2 prefetch policy ``{name}`` (replace with yours)."""

from __future__ import annotations

from collections.abc import Sequence


class Policy:
    """Load from the first holder; the L1 copy is temporary (a ``PrefetchPolicy``)."""

    temporary = True

    def choose(self, holders: Sequence[int]) -> int:
        """The first adapter holding the key."""
        return holders[0]


def build_policy() -> Policy:
    """The spec's factory: ``() -> PrefetchPolicy``."""
    return Policy()
''',
    test="""from lmcache_core.storage.l2.policies import PrefetchPolicy


def test_the_policy_is_built() -> None:
    policy = registry().builder.prefetch_policy(registered_spec())
    assert isinstance(policy, PrefetchPolicy)
    assert policy.choose([2, 0]) == 2
""",
)

SUBSCRIBER = Skeleton(
    prefix="obs",
    spec="SubscriberSpec",
    hook="lmcache_register_subscribers",
    factory="build_subscriber",
    spec_extra="            category=SubscriberCategory.LOGGING,\n",
    implementation='''"""The observability subscriber ``{name}``: counts events (yours here)."""

from __future__ import annotations

from collections import Counter

from lmcache_core.observability.subscribers import SubscriberContext


class Subscriber:
    """Counts every event by type (a ``Subscriber``); runs on the bus's drain thread."""

    name = "{name}"
    event_types: frozenset[str] | None = None  # every type

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def on_event(self, event: object) -> None:
        """Count one event."""
        self.counts[str(getattr(event, "type", type(event).__name__))] += 1

    def close(self) -> None:
        """Nothing to flush."""


def build_subscriber(context: SubscriberContext) -> Subscriber:
    """The spec's factory: ``(SubscriberContext) -> Subscriber``."""
    del context  # this subscriber reads no configuration
    return Subscriber()
''',
    test="""from lmcache_core.observability.bus import Subscriber


def test_the_spec_builds_a_subscriber() -> None:
    subscriber = registered_spec().factory(None)  # type: ignore[arg-type]  # no server
    assert isinstance(subscriber, Subscriber)
""",
)

CLI_COMMAND = Skeleton(
    prefix="cli",
    spec="CliCommandSpec",
    hook="lmcache_register_cli_commands",
    factory="build_command",
    implementation='''"""The CLI command ``lmcache {name}`` (replace with yours)."""

from __future__ import annotations

from collections.abc import Callable

import typer


def hello() -> None:
    """Say hello."""
    typer.echo("hello from {name}")


def build_command() -> Callable[[], None]:
    """The spec's factory: ``() -> typer.Typer | a command function``."""
    return hello
''',
    test="""def test_the_command_is_built() -> None:
    command = registry().builder.cli_command(registered_spec())
    assert callable(command)
""",
)

SKELETONS = {
    "eviction_policy": EVICTION,
    "store_policy": STORE_POLICY,
    "prefetch_policy": PREFETCH_POLICY,
    "subscriber": SUBSCRIBER,
    "cli_command": CLI_COMMAND,
}
"""The kinds ``new_plugin.py`` generates, by :class:`~lmcache_core.plugin.PluginKind` value."""
