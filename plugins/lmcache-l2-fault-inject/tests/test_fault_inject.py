"""Tests of the lmcache-l2-fault-inject plugin: a real fs adapter wrapped, loads faulted."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_fault_inject.adapter import FaultInjectL2Adapter, build_fault_inject
from lmcache_l2_fault_inject.config import FaultInjectConfig
from lmcache_l2_fs.adapter import FsL2Adapter

from lmcache_core.errors import UnknownPluginError
from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.context import L2AdapterContext
from lmcache_core.testing.l2_conformance import (
    L2AdapterConformance,
    empty_buffers,
    make_keys,
    make_payloads,
    untouched,
    wait,
)
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_readme_configures,
    assert_registered_plugin,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def spec_json(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    return {"type": "fault_inject", "inner": {"type": "fs", "base_path": str(tmp_path)}, **fields}


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry(strict=True)


@pytest.fixture
def context(registry: PluginRegistry) -> L2AdapterContext:
    return L2AdapterContext(registry=registry)


def wrapped(tmp_path: Path, **settings: Any) -> FaultInjectL2Adapter:
    adapter = FaultInjectL2Adapter(FsL2Adapter(tmp_path, relative_tmp_dir=".tmp"), **settings)
    adapter.start()
    return adapter


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[list[ObjectKey], list[bytes]]]:
    """400 keys stored in an fs directory (``tmp_path / "l2"``)."""
    keys = make_keys(400)
    payloads = make_payloads([32] * len(keys))
    backend = FsL2Adapter(tmp_path / "l2", relative_tmp_dir=".tmp")
    backend.start()
    try:
        assert wait(backend.submit_store(keys, payloads)) == [True] * len(keys)
    finally:
        backend.close()
    yield keys, payloads


# -- registration and configuration -------------------------------------------------------


def test_registered_and_built_through_the_registry(
    tmp_path: Path, registry: PluginRegistry, context: L2AdapterContext
) -> None:
    spec = assert_registered_plugin(
        PluginKind.L2_ADAPTER, "fault_inject", "lmcache-l2-fault-inject"
    )
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is FaultInjectConfig
    config = FaultInjectConfig.model_validate(spec_json(tmp_path, rate=0.5, seed=3))
    adapter = registry.builder.l2_adapter(spec, config, context)
    try:
        adapter.start()
        assert isinstance(adapter, FaultInjectL2Adapter)
        assert isinstance(adapter.inner, FsL2Adapter)
        status = adapter.status()
        assert status["type"] == "fault_inject"
        assert status["inner_type"] == "fs"
        assert status["is_healthy"] is True
        assert status["fault_inject"]["rate"] == 0.5
        assert status["fault_inject"]["seed"] == 3
    finally:
        adapter.close()
    assert adapter.inner.status()["is_healthy"] is False  # closing the wrapper closed it


def test_readme_examples_validate_and_fields_are_documented() -> None:
    assert_readme_configures(FaultInjectConfig, README)


def test_defaults_pass_everything_through(tmp_path: Path) -> None:
    config = FaultInjectConfig.model_validate(spec_json(tmp_path))
    assert (config.rate, config.seed, config.gap_indices, config.gap_tail_ratios) == (0, 0, [], [])


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"rate": 1.5}, "rate"),
        ({"rate": -0.1}, "rate"),
        ({"rate": float("nan")}, "rate"),
        ({"seed": "abc"}, "seed"),
        ({"seed": True}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"gap_indices": [0, -1]}, "gap_indices"),
        ({"gap_tail_ratios": [0.5, 1.5]}, "gap_tail_ratios"),
        ({"drop_chunk_hashes": ["ab"]}, "drop_chunk_hashes"),  # upstream docs only, not 0.5.6
        ({"persist_enabled": False}, "persist_enabled"),
        ({"format": "raw"}, "format"),
        ({"shared": True}, "shared"),
        ({"inner": {"base_path": "/tmp/x"}}, "inner"),
        ({"inner": "fs"}, "inner"),
    ],
)
def test_rejects(tmp_path: Path, extra: dict[str, Any], field: str) -> None:
    assert_config_rejects(FaultInjectConfig, {**spec_json(tmp_path), **extra}, field)


def test_inner_is_required(tmp_path: Path) -> None:
    assert_config_rejects(FaultInjectConfig, without(spec_json(tmp_path), "inner"), "inner")


def test_inner_eviction_and_serde_move_up_to_the_wrapper(tmp_path: Path) -> None:
    # Upstream's spelling: the inner spec keeps its own eviction block.
    eviction = {"eviction_policy": "LRU", "trigger_watermark": 0.5, "eviction_ratio": 0.1}
    inner = {"type": "fs", "base_path": str(tmp_path), "eviction": eviction}
    config = FaultInjectConfig.model_validate({"type": "fault_inject", "inner": inner})
    assert config.eviction is not None
    assert config.eviction.trigger_watermark == 0.5
    assert "eviction" not in config.inner
    serde = {"type": "fault_inject", "inner": {**inner, "serde": {"type": "zstd"}}}
    assert FaultInjectConfig.model_validate(serde).serde == {"type": "zstd"}


def test_an_eviction_block_in_both_places_is_refused(tmp_path: Path) -> None:
    inner = {"type": "fs", "base_path": str(tmp_path), "eviction": {}}
    with pytest.raises(ValueError, match="both in the inner spec and on the wrapper"):
        FaultInjectConfig.model_validate(
            {"type": "fault_inject", "inner": inner, "eviction": {"trigger_watermark": 0.9}}
        )


def test_the_inner_spec_is_validated_by_its_own_model(
    tmp_path: Path, context: L2AdapterContext
) -> None:
    bad_field = {"type": "fault_inject", "inner": {"type": "fs", "base_path": "x", "bogus": 1}}
    with pytest.raises(ValueError, match=r"inner \(fs\): bogus: unknown field"):
        build_fault_inject(bad_field, context)
    missing = {"type": "fault_inject", "inner": {"type": "fs"}}
    with pytest.raises(ValueError, match=r"inner \(fs\): base_path"):
        build_fault_inject(missing, context)
    with pytest.raises(UnknownPluginError, match="no_such_adapter"):
        build_fault_inject({"type": "fault_inject", "inner": {"type": "no_such_adapter"}}, context)


def test_building_without_a_registry_says_why(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="registry"):
        build_fault_inject(spec_json(tmp_path))


def test_a_wrapper_may_wrap_a_wrapper(tmp_path: Path, context: L2AdapterContext) -> None:
    nested = {"type": "fault_inject", "inner": spec_json(tmp_path, gap_indices=[0])}
    adapter = build_fault_inject({**nested, "gap_indices": [1]}, context)
    adapter.start()
    try:
        keys = make_keys(3)
        assert wait(adapter.submit_store(keys, make_payloads([8] * 3))) == [True] * 3
        # The outer drops position 1; the inner sees [k0, k2] and drops its position 0.
        assert wait(adapter.submit_load(keys, empty_buffers([8] * 3))) == [False, False, True]
    finally:
        adapter.close()


# -- the contract, unfaulted ------------------------------------------------------------------


class TestFaultInjectConformance(L2AdapterConformance):
    """``rate`` 0 and no gaps: the wrapper is an fs adapter to every contract test."""

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        inner = FsL2Adapter(
            tmp_path,
            relative_tmp_dir=".tmp",
            capacity_bytes=capacity_bytes,
            object_format=object_format,
        )
        return FaultInjectL2Adapter(inner)

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        assert isinstance(adapter, FaultInjectL2Adapter)
        assert isinstance(adapter.inner, FsL2Adapter)
        path = adapter.inner.path_of(key)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        return True

    def reopen(self, adapter: L2AdapterV1, tmp_path: Path) -> L2AdapterV1 | None:
        return self.make_adapter(
            tmp_path, capacity_bytes=adapter.capacity_bytes, object_format=adapter.object_format
        )


# -- faults ---------------------------------------------------------------------------------


def upstream_drops(key: ObjectKey, seed: int, rate: float) -> bool:
    """Upstream 0.5.6's rule written out from its description (a second, independent reading)."""
    text = f"{seed}:{key.chunk_hash.hex()}:{key.model_name}:{key.kv_rank}:{key.object_group_id}:"
    text += key.cache_salt
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    return value % 1_000_000 < int(rate * 1_000_000)


def test_rate_faults_loads_only_deterministically_for_a_seed(
    tmp_path: Path, stored: tuple[list[ObjectKey], list[bytes]]
) -> None:
    keys, payloads = stored
    sizes = [32] * len(keys)

    def failed(seed: int) -> set[int]:
        adapter = wrapped(tmp_path / "l2", rate=0.25, seed=seed)
        try:
            # A dropped key is still found and pinned: only its load fails.
            assert wait(adapter.submit_lookup_and_lock(keys)) == [True] * len(keys)
            adapter.unlock(keys)
            buffers = empty_buffers(sizes)
            results = wait(adapter.submit_load(keys, buffers))
            for buffer, ok, payload in zip(buffers, results, payloads, strict=True):
                assert bytes(buffer) == payload if ok else untouched(buffer)
            # The same keys fail again, whatever their position and batch.
            assert wait(adapter.submit_load(keys[::-1], empty_buffers(sizes)))[::-1] == results
            dropped = sum(not ok for ok in results)
            counters = adapter.status()["fault_inject"]
            assert counters["injected_failures"] == 2 * dropped
            assert counters["load_requests"] == 2 * len(keys)
            return {i for i, ok in enumerate(results) if not ok}
        finally:
            adapter.close()

    first = failed(7)
    assert failed(7) == first
    assert failed(8) != first
    assert 60 <= len(first) <= 140  # 25 % of 400, loosely
    assert first == {i for i, key in enumerate(keys) if upstream_drops(key, 7, 0.25)}


def test_rate_one_fails_every_load_and_rate_zero_none(
    tmp_path: Path, stored: tuple[list[ObjectKey], list[bytes]]
) -> None:
    keys, _ = stored
    for rate, expected in ((1.0, False), (0.0, True)):
        adapter = wrapped(tmp_path / "l2", rate=rate)
        try:
            assert wait(adapter.submit_load(keys, empty_buffers([32] * len(keys)))) == [
                expected
            ] * len(keys)
        finally:
            adapter.close()


def test_gap_indices_are_positions_in_each_load_batch(tmp_path: Path) -> None:
    adapter = wrapped(tmp_path, gap_indices=[0, 2, 9])
    try:
        keys = make_keys(4)
        payloads = make_payloads([32] * 4)
        assert wait(adapter.submit_store(keys, payloads)) == [True] * 4
        assert wait(adapter.submit_load(keys, empty_buffers([32] * 4))) == [
            False,
            True,
            False,
            True,
        ]
        buffers = empty_buffers([32] * 2)
        assert wait(adapter.submit_load([keys[1], keys[0]], buffers)) == [False, True]
        assert untouched(buffers[0])
        assert bytes(buffers[1]) == payloads[0]
        # Stores and lookups are never faulted.
        assert wait(adapter.submit_lookup_and_lock(keys)) == [True] * 4
        adapter.unlock(keys)
        assert adapter.injected_failures == 3  # 2 + 1; position 9 is past every batch
    finally:
        adapter.close()


@pytest.mark.parametrize(
    ("ratios", "count", "dropped"),
    [
        ([0.0], 5, {4}),  # the last
        ([1.0], 5, {0}),  # the first
        ([0.5], 5, {2}),  # the middle
        ([0.5], 4, {2}),  # round(1.5) is 2 (banker's rounding, as upstream's round())
        ([0.25, 0.75], 9, {6, 2}),
        ([0.5], 1, {0}),
    ],
)
def test_gap_tail_ratios_scale_with_the_batch(
    tmp_path: Path, ratios: list[float], count: int, dropped: set[int]
) -> None:
    adapter = wrapped(tmp_path, gap_tail_ratios=ratios)
    try:
        keys = make_keys(count)
        assert adapter.dropped_positions(keys) == dropped
        assert wait(adapter.submit_store(keys, make_payloads([8] * count))) == [True] * count
        results = wait(adapter.submit_load(keys, empty_buffers([8] * count)))
        assert {i for i, ok in enumerate(results) if not ok} == dropped
    finally:
        adapter.close()


def test_an_inner_load_error_reaches_the_caller(tmp_path: Path) -> None:
    class Exploding(FsL2Adapter):
        def submit_load(
            self, keys: Any, buffers: Any
        ) -> Future[list[bool]]:  # a real fs adapter whose load batch raises
            future: Future[list[bool]] = Future()
            future.set_exception(OSError("disk gone"))
            return future

    adapter = FaultInjectL2Adapter(Exploding(tmp_path, relative_tmp_dir=".tmp"), gap_indices=[0])
    adapter.start()
    try:
        with pytest.raises(OSError, match="disk gone"):
            wait(adapter.submit_load(make_keys(2), empty_buffers([8, 8])))
        # A batch made only of dropped keys never reaches the inner adapter.
        assert wait(adapter.submit_load(make_keys(1), empty_buffers([8]))) == [False]
    finally:
        adapter.close()


def test_capacity_usage_and_deletes_are_the_inner_adapters(tmp_path: Path) -> None:
    inner = FsL2Adapter(tmp_path, relative_tmp_dir=".tmp", capacity_bytes=1 << 20)
    adapter = FaultInjectL2Adapter(inner, rate=1.0)
    adapter.start()
    try:
        assert adapter.capacity_bytes == 1 << 20
        keys = make_keys(2, salt="tenant-a")
        assert wait(adapter.submit_store(keys, make_payloads([100, 100]))) == [True, True]
        assert adapter.used_bytes == inner.used_bytes > 200
        assert adapter.usage().by_salt == {"tenant-a": inner.used_bytes}
        assert sorted(adapter.keys()) == sorted(keys)
        assert adapter.delete(keys[:1]) == 1
        assert inner.keys() == keys[1:]
        adapter.buffers_are_scratch = True
        assert inner.buffers_are_scratch is True
    finally:
        adapter.close()
