"""A conformance suite every eviction policy's tests subclass (third-party policies too).

It checks the shared rules of :class:`~lmcache_core.storage.eviction.EvictionPolicy`
through the public methods only: candidates are the tracked keys, each once; unknown
keys are ignored by ``on_accessed`` and ``on_removed``; removed keys are no longer
candidates; asking for candidates forgets nothing; and the iteration rule the
controllers rely on (stop early, then report the evicted keys with ``on_removed``).
For an :class:`~lmcache_core.storage.eviction.IsolatedEvictionPolicy` it also checks
the per-salt orders and that the limits come from the quotas the settings carry.
Subclass it in a class whose name starts with ``Test`` and implement
:meth:`~EvictionPolicyConformance.make_policy`::

    from lmcache_core.testing.eviction_conformance import EvictionPolicyConformance


    class TestMyPolicyConformance(EvictionPolicyConformance):
        keeps_prefixes = False  # say which optional rules the policy follows

        def make_policy(self, settings):
            return MyPolicy()

The base class's name does not start with ``Test``, so pytest does not collect it
where it is imported; the subclass inherits every ``test_*`` method. The flags
describe the policy; a test of a rule the policy does not claim skips, saying why:

* :attr:`~EvictionPolicyConformance.offers_candidates`: False for a policy that
  never evicts (``noop``); its candidates must then stay empty whatever happens.
* :attr:`~EvictionPolicyConformance.keeps_prefixes`: the later chunks of a batch go
  before the earlier ones (``LRU``); False for a policy that ignores prefixes.
* :attr:`~EvictionPolicyConformance.tolerates_removal_while_iterating`: the
  iterator survives ``on_removed`` between two ``next()`` calls (what
  :func:`~lmcache_core.storage.eviction.iter_candidates` gives); the contract only
  asks for it after the caller stopped iterating.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from lmcache_core.storage.eviction import (
    EvictionPolicy,
    EvictionSettings,
    IsolatedEvictionPolicy,
    quota_eviction_targets,
)
from lmcache_core.storage.keys import ObjectKey


def request_keys(request: str, count: int, salt: str = "") -> list[ObjectKey]:
    """The keys of one request's ``count`` chunks under ``salt``, in prefix order.

    Args:
        request: Distinguishes requests (it prefixes every chunk hash).
        count: How many chunks.
        salt: Their ``cache_salt``.
    """
    return [ObjectKey(f"{request}{i}".encode(), "model", 0, 0, salt) for i in range(count)]


class StaticQuotas:
    """A :class:`~lmcache_core.storage.eviction.QuotaLimits` from a plain dict of bytes."""

    def __init__(self) -> None:
        self.limits: dict[str, int] = {}

    def limit_bytes(self, cache_salt: str) -> int:
        """The salt's limit; 0 without one."""
        return self.limits.get(cache_salt, 0)


def _each_once(keys: Iterable[ObjectKey]) -> list[ObjectKey]:
    listed = list(keys)
    assert len(listed) == len(set(listed)), f"a key was yielded twice: {listed}"
    return listed


class EvictionPolicyConformance:
    """The shared rules of the eviction policy contract; subclass it (see the module)."""

    offers_candidates: bool = True
    """False for a policy that never offers a key (it never evicts)."""

    keeps_prefixes: bool = True
    """The later chunks of a batch are evicted before the earlier ones."""

    tolerates_removal_while_iterating: bool = True
    """An iterator survives ``on_removed`` between two ``next()`` calls."""

    def make_policy(self, settings: EvictionSettings) -> EvictionPolicy:
        """A new, empty policy built from ``settings`` (as the spec's factory would)."""
        raise NotImplementedError("subclasses implement make_policy(settings)")

    # -- fixtures ---------------------------------------------------------------------

    @pytest.fixture
    def quotas(self) -> StaticQuotas:
        """The limits the settings carry (an isolated policy must read them)."""
        return StaticQuotas()

    @pytest.fixture
    def policy(self, quotas: StaticQuotas) -> EvictionPolicy:
        """A policy made for a 1 GiB tier with the 0.8 / 0.2 defaults and ``quotas``."""
        return self.make_policy(EvictionSettings(0.8, 0.2, 1 << 30, quotas))

    def _expect(self, keys: Iterable[ObjectKey]) -> set[ObjectKey]:
        """What the candidates must be, given the tracked keys."""
        return set(keys) if self.offers_candidates else set()

    def _require_candidates(self) -> None:
        if not self.offers_candidates:
            pytest.skip("the policy never offers candidates")

    # -- the EvictionPolicy contract ----------------------------------------------------

    def test_implements_the_protocol(self, policy: EvictionPolicy) -> None:
        """The policy satisfies the runtime-checkable ``EvictionPolicy`` protocol."""
        assert isinstance(policy, EvictionPolicy)

    def test_a_new_policy_has_no_candidates(self, policy: EvictionPolicy) -> None:
        """A policy that tracks nothing offers nothing."""
        assert list(policy.candidates()) == []

    def test_candidates_are_the_tracked_keys_each_once(self, policy: EvictionPolicy) -> None:
        """Candidates are exactly the tracked keys (of every salt), none twice."""
        a, b = request_keys("a", 3), request_keys("b", 2, salt="s")
        policy.on_stored(a)
        policy.on_stored(b)
        policy.on_accessed(a[:1])
        assert set(_each_once(policy.candidates())) == self._expect(a + b)

    def test_asking_for_candidates_forgets_nothing(self, policy: EvictionPolicy) -> None:
        """Iterating candidates does not evict: only ``on_removed`` forgets a key."""
        self._require_candidates()
        policy.on_stored(request_keys("a", 4))
        first = list(policy.candidates())
        assert list(policy.candidates()) == first
        assert next(policy.candidates()) == first[0]

    def test_the_later_chunks_of_a_batch_go_first(self, policy: EvictionPolicy) -> None:
        """A prefix-keeping policy offers a batch's last chunk first, chunk 0 last."""
        self._require_candidates()
        if not self.keeps_prefixes:
            pytest.skip("the policy does not keep prefixes")
        keys = request_keys("c", 5)
        policy.on_stored(keys)
        assert list(policy.candidates()) == list(reversed(keys))

    def test_empty_batches_change_nothing(self, policy: EvictionPolicy) -> None:
        """Empty batches are accepted and change no order."""
        keys = request_keys("a", 2)
        policy.on_stored(keys)
        before = list(policy.candidates())
        policy.on_stored([])
        policy.on_accessed([])
        policy.on_removed([])
        assert list(policy.candidates()) == before

    def test_accessing_unknown_keys_does_not_track_them(self, policy: EvictionPolicy) -> None:
        """``on_accessed`` ignores keys the policy does not track."""
        known = request_keys("a", 2)
        policy.on_stored(known)
        policy.on_accessed(request_keys("x", 3))
        assert set(policy.candidates()) == self._expect(known)

    def test_removing_unknown_keys_is_ignored(self, policy: EvictionPolicy) -> None:
        """``on_removed`` ignores unknown keys without raising or reordering."""
        known = request_keys("a", 2)
        policy.on_stored(known)
        before = list(policy.candidates())
        policy.on_removed(request_keys("y", 3))
        assert list(policy.candidates()) == before

    def test_removed_keys_are_no_longer_candidates(self, policy: EvictionPolicy) -> None:
        """A removed key is never offered again."""
        keys = request_keys("a", 4)
        policy.on_stored(keys)
        policy.on_removed([keys[3], keys[1]])
        assert set(policy.candidates()) == self._expect([keys[0], keys[2]])
        policy.on_removed(keys)
        assert list(policy.candidates()) == []

    def test_a_key_stored_again_is_tracked_once(self, policy: EvictionPolicy) -> None:
        """Storing a tracked key again keeps one entry for it."""
        a, b = request_keys("a", 2), request_keys("b", 1)
        policy.on_stored(a)
        policy.on_stored(b)
        policy.on_stored(a)
        assert set(_each_once(policy.candidates())) == self._expect(a + b)
        policy.on_removed(a)
        assert set(policy.candidates()) == self._expect(b)

    def test_the_same_chunk_under_two_salts_is_two_keys(self, policy: EvictionPolicy) -> None:
        """Keys that differ only in ``cache_salt`` are tracked apart."""
        (one,), (two,) = request_keys("k", 1, salt="one"), request_keys("k", 1, salt="two")
        policy.on_stored([one])
        policy.on_stored([two])
        policy.on_removed([one])
        assert set(policy.candidates()) == self._expect([two])

    def test_stop_early_then_remove_what_was_taken(self, policy: EvictionPolicy) -> None:
        """The controllers' pattern: take a few, stop, ``on_removed`` them, ask again."""
        self._require_candidates()
        keys = request_keys("k", 100)
        policy.on_stored(keys)
        iterator = policy.candidates()
        taken = [next(iterator) for _ in range(10)]
        policy.on_removed(taken)
        rest = _each_once(policy.candidates())
        assert set(rest) == set(keys) - set(taken)
        assert list(policy.candidates())[:5] == rest[:5]

    def test_removal_between_next_calls(self, policy: EvictionPolicy) -> None:
        """With ``iter_candidates``-style iterators, removals between ``next()`` calls are safe."""
        self._require_candidates()
        if not self.tolerates_removal_while_iterating:
            pytest.skip("the policy's iterators need the caller to stop before on_removed")
        keys = request_keys("k", 200)
        policy.on_stored(keys)
        seen = []
        for index, candidate in enumerate(policy.candidates()):
            seen.append(candidate)
            if index % 3:  # skip every third one, as if it were locked
                policy.on_removed([candidate])
        assert sorted(_each_once(seen)) == sorted(keys)
        assert set(policy.candidates()) == set(seen[::3])

    def test_keys_added_while_iterating_are_yielded_at_most_once(
        self, policy: EvictionPolicy
    ) -> None:
        """Keys moved or added during an iteration are yielded at most once."""
        self._require_candidates()
        if not self.tolerates_removal_while_iterating:
            pytest.skip("the policy's iterators need the caller to stop before other calls")
        a, b = request_keys("a", 50), request_keys("b", 50)
        policy.on_stored(a)
        seen = []
        for candidate in policy.candidates():
            seen.append(candidate)
            if len(seen) == 5:
                policy.on_accessed(a[:10])
                policy.on_stored(b)
        assert set(_each_once(seen)) <= set(a) | set(b)
        assert set(a) <= set(seen)

    # -- the IsolatedEvictionPolicy contract (skipped for other policies) -------------

    def _isolated(self, policy: EvictionPolicy) -> IsolatedEvictionPolicy:
        if not isinstance(policy, IsolatedEvictionPolicy):
            pytest.skip("not an isolated policy")
        return policy

    def test_each_salt_orders_exactly_its_own_keys(self, policy: EvictionPolicy) -> None:
        """``salt_candidates`` offers exactly the salt's tracked keys."""
        isolated = self._isolated(policy)
        alice, bob = request_keys("a", 3, "alice"), request_keys("b", 2, "bob")
        isolated.on_stored([*alice[:1], *bob])
        isolated.on_stored(alice[1:])
        assert set(_each_once(isolated.salt_candidates("alice"))) == self._expect(alice)
        assert set(_each_once(isolated.salt_candidates("bob"))) == self._expect(bob)
        assert list(isolated.salt_candidates("nobody")) == []
        isolated.on_removed(bob)
        assert list(isolated.salt_candidates("bob")) == []
        assert set(isolated.candidates()) == self._expect(alice)

    def test_salt_candidates_follow_the_iteration_rule(self, policy: EvictionPolicy) -> None:
        """``salt_candidates`` follows the same stop-then-remove rule."""
        isolated = self._isolated(policy)
        self._require_candidates()
        keys = request_keys("k", 40, "s")
        isolated.on_stored(keys)
        iterator = isolated.salt_candidates("s")
        taken = [next(iterator) for _ in range(5)]
        isolated.on_removed(taken)
        assert set(_each_once(isolated.salt_candidates("s"))) == set(keys) - set(taken)

    def test_limits_come_from_the_settings_quotas(
        self, policy: EvictionPolicy, quotas: StaticQuotas
    ) -> None:
        """``limit_bytes`` reads the quotas the settings carry, live; 0 without one."""
        isolated = self._isolated(policy)
        assert isolated.limit_bytes("alice") == 0  # no quota: allowlist semantics
        quotas.limits["alice"] = 1000
        assert isolated.limit_bytes("alice") == 1000
        del quotas.limits["alice"]
        assert isolated.limit_bytes("alice") == 0

    def test_quota_targets_evict_a_salt_over_its_watermark(
        self, policy: EvictionPolicy, quotas: StaticQuotas
    ) -> None:
        """The controllers' quota targets work with the policy's limits."""
        isolated = self._isolated(policy)
        quotas.limits.update(big=1000, small=1000)
        targets = quota_eviction_targets(isolated, {"big": 1000, "small": 10, "free": 7}, 0.8, 0.2)
        assert targets == {"big": 201, "free": 7}
