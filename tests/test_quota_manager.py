"""Quotas in-process: the QuotaManager, IsolatedLRU under the L1 and L2 controllers.

A real ``L1Manager`` (anonymous memory) and the real ``mock`` L2 adapter are
driven by hand, one eviction cycle at a time, so each rule is checked exactly:
allowlist semantics, quotas kept, lowered quotas enforced in one cycle, locked
and staged objects never evicted, and the capacity still protected.
"""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from lmcache_core.plugin import PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.storage.eviction import EvictionPolicy, EvictionSettings
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1 import L1Controller, L1Manager
from lmcache_core.storage.l2.tier import AdapterEviction
from lmcache_core.storage.quota import (
    GIB,
    QuotaManager,
    QuotaTableFull,
    check_limit_gb,
    salt_from_path,
    salt_to_path,
)
from tests.storage.doubles import KIB, MIB, make_l1

OBJ = 64 * KIB  # 16 objects fill the 1 MiB L1 of make_l1


def isolated(quotas: QuotaManager, capacity: int = MIB) -> EvictionPolicy:
    policy: EvictionPolicy = PluginRegistry(strict=True).build(
        PluginKind.EVICTION_POLICY,
        "IsolatedLRU",
        EvictionSettings(0.8, 0.2, capacity, quotas),
    )
    return policy


def salted(request: str, n: int, salt: str) -> list[ObjectKey]:
    return [ObjectKey(f"{request}{i}".encode(), "model", 0, 0, salt) for i in range(n)]


def store(l1: L1Manager, keys: list[ObjectKey], nbytes: int = OBJ) -> None:
    reservations = [r for r in l1.reserve(keys, nbytes) if r is not None]
    l1.commit(reservations)


def resident(l1: L1Manager, keys: list[ObjectKey]) -> int:
    return sum(l1.contains(keys))


# -- the quota table ---------------------------------------------------------------------


def test_limits_are_set_replaced_and_removed() -> None:
    quotas = QuotaManager()
    assert quotas.limit_bytes("alice") == 0
    entry = quotas.set_limit("alice", 1.5)
    assert (entry.limit_gb, entry.limit_bytes) == (1.5, int(1.5 * GIB))
    assert quotas.limit_bytes("alice") == int(1.5 * GIB)
    quotas.set_limit("alice", 0.1)
    assert quotas.get("alice") is not None
    assert quotas.get("alice").limit_gb == 0.1  # type: ignore[union-attr]
    assert set(quotas.limits()) == {"alice"}
    assert quotas.remove("alice") is True
    assert quotas.remove("alice") is False
    assert quotas.limit_bytes("alice") == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, ">= 0"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (10**400, "finite"),
        ("1", "number"),
        (True, "number"),
        (None, "number"),
        ([1], "number"),
        (2.0e9, "<="),
    ],
)
def test_bad_limits_are_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_limit_gb(value)
    with pytest.raises(ValueError, match=message):
        QuotaManager().set_limit("s", value)  # type: ignore[arg-type]


def test_zero_and_integer_limits_are_accepted() -> None:
    assert check_limit_gb(0) == 0.0
    assert check_limit_gb(3) == 3.0


def test_the_table_is_bounded_but_replacing_an_entry_always_works() -> None:
    quotas = QuotaManager(max_entries=2)
    quotas.set_limit("a", 1)
    quotas.set_limit("b", 1)
    with pytest.raises(QuotaTableFull, match="2 salts"):
        quotas.set_limit("c", 1)
    quotas.set_limit("a", 2)
    quotas.remove("b")
    quotas.set_limit("c", 1)
    assert sorted(quotas.limits()) == ["a", "c"]


def test_salt_names_in_paths() -> None:
    assert salt_from_path("_default") == ""
    assert salt_to_path("") == "_default"
    assert salt_from_path("tenant-1") == "tenant-1"
    for bad in ("a@b", "a\\b", "x\x00", "s" * 129):
        with pytest.raises(ValueError, match="cache_salt"):
            salt_from_path(bad)
    with pytest.raises(ValueError, match="cache_salt"):
        QuotaManager().set_limit("a@b", 1)


def test_usage_is_read_per_tier_and_compared_with_the_fullest_enforcing_tier() -> None:
    quotas = QuotaManager()
    quotas.add_tier("l1", lambda: {"a": 10, "b": 1}, enforcing=False)
    quotas.add_tier("l2[1]:fs", lambda: {"a": 3}, enforcing=True)
    quotas.add_tier("l2[2]:s3", lambda: {"a": 5}, enforcing=True)
    with pytest.raises(ValueError, match="added already"):
        quotas.add_tier("l1", dict, enforcing=True)
    usage = quotas.usage_by_tier()
    assert usage == {"l1": {"a": 10, "b": 1}, "l2[1]:fs": {"a": 3}, "l2[2]:s3": {"a": 5}}
    assert quotas.enforced_by == ["l2[1]:fs", "l2[2]:s3"]
    assert quotas.compared_usage("a", usage, quotas.enforced_by) == 5
    assert quotas.compared_usage("b", usage, quotas.enforced_by) == 0
    # Nothing enforces: the fullest tier of all is reported.
    assert quotas.compared_usage("a", usage, []) == 10


def test_concurrent_writers_and_readers_keep_the_table_consistent() -> None:
    quotas = QuotaManager(max_entries=1000)
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for round_ in range(200):
                salt = f"s{worker}-{round_ % 50}"
                quotas.set_limit(salt, round_ / 100)
                assert quotas.limit_bytes(salt) == int(round_ / 100 * GIB)
                if round_ % 3 == 0:
                    quotas.remove(salt)
                quotas.limits()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(quotas.limits()) <= 200


# -- IsolatedLRU in L1 -------------------------------------------------------------------


def test_l1_allowlist_quota_kept_and_lowered_quota_enforced_in_one_cycle() -> None:
    quotas = QuotaManager()
    l1 = make_l1(policy=isolated(quotas))
    controller = L1Controller(l1)
    quotas.set_limit("paid", 10 * OBJ / GIB)
    paid, stranger, default = salted("p", 6, "paid"), salted("x", 3, "stranger"), salted("d", 2, "")
    for keys in (paid, stranger, default):
        store(l1, keys)
    assert l1.bytes_by_salt() == {"paid": 6 * OBJ, "stranger": 3 * OBJ, "": 2 * OBJ}
    assert controller.run_once() == 5 * OBJ  # the two salts without a quota, entirely
    assert resident(l1, stranger) == resident(l1, default) == 0
    assert resident(l1, paid) == 6
    assert controller.run_once() == 0  # 6 < 0.8 * 10: kept, cycle after cycle
    assert l1.bytes_by_salt() == {"paid": 6 * OBJ}

    quotas.set_limit("paid", 4 * OBJ / GIB)  # lowered: 6 >= 0.8 * 4
    controller.run_once()
    # One cycle brings it below 80 % of 4 objects, later chunks first (prefixes stay).
    assert l1.contains(paid) == [True, True, True, False, False, False]
    assert l1.bytes_by_salt() == {"paid": 3 * OBJ}
    assert controller.run_once() == 0

    quotas.remove("paid")
    controller.run_once()
    assert l1.bytes_by_salt() == {}
    assert l1.usage().used_bytes == 0


def test_l1_quota_eviction_skips_locked_and_staged_objects() -> None:
    quotas = QuotaManager()
    l1 = make_l1(policy=isolated(quotas))
    keys = salted("k", 4, "nobody")
    store(l1, keys)
    assert l1.lock_for_read(keys[:2]) == [True, True]
    staged = l1.reserve(salted("s", 2, "nobody"), OBJ)
    assert l1.evict_over_quota() == 2 * OBJ
    assert l1.contains(keys) == [True, True, False, False]
    assert l1.usage().staged_objects == 2
    l1.unlock(keys[:2])
    l1.commit([r for r in staged if r is not None])
    assert l1.evict_over_quota() == 4 * OBJ
    assert l1.usage().used_bytes == 0


def test_l1_global_watermark_still_protects_the_capacity() -> None:
    quotas = QuotaManager()
    quotas.set_limit("a", 1.0)  # far above the 1 MiB L1: quotas never trigger
    quotas.set_limit("b", 1.0)
    l1 = make_l1(policy=isolated(quotas))
    store(l1, salted("a", 8, "a"))
    store(l1, salted("b", 6, "b"))
    assert l1.evict_over_quota() == 0
    # 14 of 16 objects > 80 %: the tier-wide round frees 20 % of the capacity, oldest first.
    freed = L1Controller(l1).run_once()
    assert freed >= 0.2 * MIB
    assert l1.usage().used_bytes <= 0.8 * MIB
    assert resident(l1, salted("b", 6, "b")) == 6
    # And a store that does not fit evicts in the global order too.
    store(l1, salted("c", 6, "a"))
    assert l1.usage().used_bytes <= MIB


def test_lru_and_noop_l1_ignore_quotas() -> None:
    registry = PluginRegistry(strict=True)
    for name in ("LRU", "noop"):
        policy = registry.build(PluginKind.EVICTION_POLICY, name, EvictionSettings(0.8, 0.2, MIB))
        l1 = make_l1(policy=policy)
        store(l1, salted("k", 3, "nobody"))
        assert l1.evict_over_quota() == 0
        assert l1.bytes_by_salt() == {"nobody": 3 * OBJ}


# -- IsolatedLRU in an L2 adapter --------------------------------------------------------


def mock_adapter(max_size_gb: float = 1.0) -> object:
    from lmcache_l2_mock.adapter import build_mock

    return build_mock({"type": "mock", "max_size_gb": max_size_gb, "mock_bandwidth_gb": 100})


def test_l2_quota_eviction_works_without_and_with_a_capacity() -> None:
    from lmcache_core.storage.l2.adapter import L2AdapterV1

    quotas = QuotaManager()
    adapter = mock_adapter()
    assert isinstance(adapter, L2AdapterV1)
    try:
        policy = isolated(quotas, capacity=0)
        eviction = AdapterEviction(policy, trigger_watermark=0.8, eviction_ratio=0.2)
        payload = bytes(1000)
        size = 1000 + 48  # framed: payload + header
        keep, strangers = salted("k", 5, "kept"), salted("x", 3, "stranger")
        for keys in (keep, strangers):
            stored = adapter.submit_store(keys, [payload] * len(keys)).result(5)
            assert stored == [True] * len(keys)
            policy.on_stored(keys)
        quotas.set_limit("kept", 10 * size / GIB)
        assert eviction.enforce(adapter) == 3
        assert adapter.usage().by_salt == {"kept": 5 * size}
        assert eviction.enforce(adapter) == 0

        quotas.set_limit("kept", 2 * size / GIB)
        pinned = adapter.submit_lookup_and_lock(keep[:1]).result(5)
        assert pinned == [True]
        assert eviction.enforce(adapter) == 4  # down to 1 object: the pinned prefix stays
        assert adapter.usage().by_salt == {"kept": size}
        assert adapter.submit_lookup_and_lock(keep).result(5) == [True] + [False] * 4
    finally:
        adapter.close()  # type: ignore[attr-defined]


# -- the route without a data path -------------------------------------------------------


def test_the_quota_api_answers_503_before_the_data_path_runs() -> None:
    from tests.helpers import app_without_data_path

    registry = PluginRegistry(strict=True)
    app = app_without_data_path({"l1_size_gb": 1, "eviction_policy": "IsolatedLRU"}, registry)
    with TestClient(app) as client:
        for method, path in [("GET", "/quota"), ("GET", "/quota/a"), ("DELETE", "/quota/a")]:
            response = client.request(method, path)
            assert response.status_code == 503, (method, path)
            assert "not running" in response.json()["detail"]
        response = client.put("/quota/a", json={"limit_gb": 1})
        assert response.status_code == 503
