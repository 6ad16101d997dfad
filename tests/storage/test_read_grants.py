"""The read-lock ledger against a naive model: one deadline per lock, no merging tricks."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from lmcache_core.storage.read_grants import Ledger, ReadGrants

TTL = 1.0
KEYS = ("a", "b", "c")


class Model:
    """One key's locks, one entry per lock: live deadlines and orphan deadlines."""

    def __init__(self) -> None:
        self.live: list[float] = []
        self.orphans: list[float] = []

    def expire(self, now: float) -> int:
        """Eagerly what the ledger does lazily: expired locks become orphans for a TTL."""
        expired = [d for d in self.live if d <= now]
        self.live = [d for d in self.live if d > now]
        self.orphans += [d + TTL for d in expired]
        self.orphans = [d for d in self.orphans if d > now]
        return len(expired)

    def release(self, count: int) -> None:
        """Orphans first (oldest first), then the live locks closest to expiry."""
        self.orphans.sort()
        taken = min(count, len(self.orphans))
        del self.orphans[:taken]
        self.live.sort()
        del self.live[: count - taken]


def expand(pool: list[list[float]]) -> list[float]:
    return sorted(d for d, count in pool for _ in range(int(count)))


class ReadGrantsMachine(RuleBasedStateMachine):
    """Grant, release, prune, expire, forget and the passing of time, compared step by step."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.expired_seen = 0  # locks the ledger reported expired, over the run
        self.expired_model = 0  # locks that expired in the model

    @initialize(fraction=st.sampled_from([0.0, 0.01, 0.3]))
    def setup(self, fraction: float) -> None:
        self.grants: ReadGrants[str, Ledger] = ReadGrants(TTL, fraction)
        self.ledgers = {key: Ledger() for key in KEYS}
        self.models = {key: Model() for key in KEYS}

    def _advance_model(self) -> None:
        for model in self.models.values():
            self.expired_model += model.expire(self.now)

    @rule(
        step=st.one_of(
            st.sampled_from([0.0, 0.001, 0.005, 0.5, TTL, 1.5 * TTL, 2 * TTL]),
            st.floats(0.0, 3 * TTL, allow_nan=False),
        )
    )
    def tick(self, step: float) -> None:
        self.now += step
        self._advance_model()

    @rule(key=st.sampled_from(KEYS), count=st.integers(1, 3))
    def grant(self, key: str, count: int) -> None:
        deadline = self.now + TTL
        model = self.models[key]
        # The documented merge: a grant within the window of the latest live one
        # shares its (earlier) deadline.
        if model.live and deadline - max(model.live) <= self.grants.merge_window:
            deadline = max(model.live)
        model.live += [deadline] * count
        self.grants.grant(key, self.ledgers[key], count, self.now + TTL)

    def _grant_in_model(self, keys: list[str], count: int, deadline: float) -> None:
        for key in keys:
            model = self.models[key]
            merged = deadline
            if model.live and deadline - max(model.live) <= self.grants.merge_window:
                merged = max(model.live)
            model.live += [merged] * count

    @rule(keys=st.lists(st.sampled_from(KEYS), unique=True), count=st.integers(1, 3))
    def grant_many(self, keys: list[str], count: int) -> None:
        """The batched grant (a lookup's prefix) does what one grant per key does."""
        deadline = self.now + TTL
        self._grant_in_model(keys, count, deadline)
        self.grants.grant_many(keys, self.ledgers, count, deadline)

    @rule(keys=st.lists(st.sampled_from(KEYS), unique=True), count=st.integers(1, 3))
    def grant_each(self, keys: list[str], count: int) -> None:
        """The batched grant with the ledgers looked up by the caller: the same again."""
        deadline = self.now + TTL
        self._grant_in_model(keys, count, deadline)
        self.grants.grant_each(keys, [self.ledgers[k] for k in keys], count, deadline)

    @rule(key=st.sampled_from(KEYS), count=st.integers(1, 4))
    def release(self, key: str, count: int) -> None:
        self.grants.release(key, self.ledgers[key], count, self.now)
        self.models[key].release(count)

    @rule(key=st.sampled_from(KEYS))
    def prune(self, key: str) -> None:
        self.expired_seen += self.grants.prune(self.ledgers[key], self.now)

    @rule()
    def expire(self) -> None:
        idle: list[str] = []

        def on_idle(key: str, ledger: Ledger) -> bool:
            assert ledger is self.ledgers[key]
            idle.append(key)
            return False

        before = set(self.grants.held)
        self.expired_seen += self.grants.expire(self.now, on_idle)
        # Exactly the ledgers that hold something are kept, and every swept one
        # left without a live lock is told (a temporary object goes then).
        holding = {k for k, m in self.models.items() if m.live or m.orphans}
        assert set(self.grants.held) == holding
        assert set(idle) == {k for k in before if not self.models[k].live}

    @rule(key=st.sampled_from(KEYS))
    def forget(self, key: str) -> None:
        """The object is dropped (evicted, deleted) and later stored again."""
        self.grants.forget(key)
        self.ledgers[key] = Ledger()
        self.models[key] = Model()

    @invariant()
    def matches_the_model(self) -> None:
        if not hasattr(self, "grants"):
            return
        for key, ledger in self.ledgers.items():
            self.expired_seen += self.grants.prune(ledger, self.now)
            model = self.models[key]
            assert ledger.readers == len(model.live) == sum(c for _, c in ledger.grants)
            assert expand(ledger.grants) == sorted(model.live)
            assert expand(ledger.orphans) == sorted(model.orphans)
            if ledger.grants or ledger.orphans:
                assert self.grants.held.get(key) is ledger
                deadlines = [d for d, _ in ledger.grants + ledger.orphans]
                assert self.grants.next_deadline <= min(deadlines)
        assert self.expired_seen == self.expired_model
        assert self.grants.locked_count(self.now) == sum(
            1 for k, m in self.models.items() if m.live and k in self.grants.held
        )


TestReadGrants = ReadGrantsMachine.TestCase
TestReadGrants.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_a_late_unlock_takes_the_orphan_not_a_newer_readers_lock() -> None:
    grants: ReadGrants[str, Ledger] = ReadGrants(TTL)
    ledger = Ledger()
    grants.grant("k", ledger, 1, 0.0 + TTL)  # a slow reader
    grants.grant("k", ledger, 1, 1.5 + TTL)  # a newer reader, after the first expired
    assert grants.prune(ledger, 1.5) == 1
    grants.release("k", ledger, 1, 1.6)  # the slow reader's late unlock
    assert ledger.readers == 1 and ledger.grants == [[2.5, 1]]  # the newer lock stands
    assert not ledger.orphans
    grants.release("k", ledger, 5, 1.7)  # never below zero
    assert ledger.readers == 0 and "k" not in grants.held


def test_grants_close_together_share_the_earlier_deadline() -> None:
    grants: ReadGrants[str, Ledger] = ReadGrants(TTL, 0.01)
    ledger = Ledger()
    for i in range(1000):
        grants.grant("k", ledger, 1, i * 0.001 + TTL)  # a thousand readers in one second
    assert ledger.readers == 1000
    assert 50 <= len(ledger.grants) <= 101  # bounded by the merge window, not the readers
    assert grants.next_deadline == TTL
    assert grants.expire(10.0) == 1000 and not grants.held
    assert grants.next_deadline == math.inf


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        ReadGrants(0.0)
    with pytest.raises(ValueError):
        ReadGrants(1.0, 1.0)
