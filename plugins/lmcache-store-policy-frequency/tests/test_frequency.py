"""lmcache-store-policy-frequency: registration, counting, bounds, and the env settings."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from lmcache_store_policy_frequency.policy import (
    THRESHOLD_ENV,
    TRACKED_ENV,
    FrequencyAdmission,
)

from lmcache_core.plugin import PluginKind, StorePolicySpec
from lmcache_core.plugin.registry import ENTRY_POINT_GROUP, PluginRegistry
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.policies import AdmittingStorePolicy, StorePolicy

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def registry() -> PluginRegistry:
    """A strict registry of the entry points pyproject.toml declares (no install needed)."""
    group = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    entry_points = [metadata.EntryPoint(n, v, ENTRY_POINT_GROUP) for n, v in group.items()]
    return PluginRegistry(strict=True, entry_points=entry_points)


def build() -> StorePolicy:
    spec = registry().resolve(PluginKind.STORE_POLICY, "frequency")
    assert isinstance(spec, StorePolicySpec)
    return registry().builder.store_policy(spec)


def keys(*names: str) -> list[ObjectKey]:
    return [ObjectKey(n.encode(), "m", 0) for n in names]


def test_built_through_the_registry_as_an_admitting_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(THRESHOLD_ENV, raising=False)
    policy = build()
    assert isinstance(policy, AdmittingStorePolicy)
    assert isinstance(policy, FrequencyAdmission) and policy.threshold == 2
    assert list(policy.targets(3)) == [0, 1, 2]
    assert policy.keep_in_l1


def test_a_key_is_admitted_from_its_nth_store_on() -> None:
    policy = FrequencyAdmission(threshold=3)
    a, b = keys("a", "b")
    assert policy.admit([a, b]) == [False, False]
    assert policy.admit([a]) == [False]
    assert policy.admit([a, b]) == [True, False]
    assert policy.admit([a, b]) == [True, True]


def test_threshold_one_admits_everything() -> None:
    assert FrequencyAdmission(threshold=1).admit(keys("x", "y")) == [True, True]


def test_the_count_table_is_bounded_and_forgets_the_least_recent() -> None:
    policy = FrequencyAdmission(threshold=2, tracked_keys=2)
    a, b, c = keys("a", "b", "c")
    policy.admit([a, b, c])  # a is forgotten
    assert len(policy) == 2
    assert policy.admit([a, c]) == [False, True]


def test_settings_come_from_the_environment_and_bad_ones_fail_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(THRESHOLD_ENV, "4")
    monkeypatch.setenv(TRACKED_ENV, "10")
    policy = build()
    assert isinstance(policy, FrequencyAdmission)
    assert (policy.threshold, policy.tracked_keys) == (4, 10)
    monkeypatch.setenv(THRESHOLD_ENV, "0")
    with pytest.raises(ValueError, match="threshold"):
        build()
    monkeypatch.setenv(THRESHOLD_ENV, "two")
    with pytest.raises(ValueError, match=THRESHOLD_ENV):
        build()
