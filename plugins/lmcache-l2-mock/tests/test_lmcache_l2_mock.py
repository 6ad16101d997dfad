"""Tests of the lmcache-l2-mock plugin distribution."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_mock.adapter import GIB, DoesNotFit, MockL2Adapter, build_mock
from lmcache_l2_mock.config import MockAdapterConfig

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.object_format import HEADER_SIZE
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
MINIMAL: dict[str, Any] = {"type": "mock", "max_size_gb": 4, "mock_bandwidth_gb": 10}


def test_registered_and_built_through_the_registry() -> None:
    from lmcache_core.plugin.registry import PluginRegistry

    spec = assert_registered_plugin(PluginKind.L2_ADAPTER, "mock", "lmcache-l2-mock")
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is MockAdapterConfig
    registry = PluginRegistry(strict=True)
    config = MockAdapterConfig.model_validate(MINIMAL)
    adapter = registry.build(PluginKind.L2_ADAPTER, "mock", config)
    try:
        adapter.start()
        assert adapter.status()["is_healthy"] is True
    finally:
        adapter.close()


def test_readme_examples_validate_and_fields_are_documented() -> None:
    assert_readme_configures(MockAdapterConfig, README)


def test_fault_injection_defaults_are_off() -> None:
    config = MockAdapterConfig.model_validate(MINIMAL)
    assert config.failure_rate == 0
    assert config.seed == 0
    assert config.fail_chunk_indices == []
    assert config.added_latency_ms == 0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**MINIMAL, "rate": 0.5}, "rate"),
        (without(MINIMAL, "max_size_gb"), "max_size_gb"),
        (without(MINIMAL, "mock_bandwidth_gb"), "mock_bandwidth_gb"),
        ({**MINIMAL, "max_size_gb": 0}, "max_size_gb"),
        ({**MINIMAL, "max_size_gb": float("inf")}, "max_size_gb"),
        ({**MINIMAL, "mock_bandwidth_gb": -1}, "mock_bandwidth_gb"),
        ({**MINIMAL, "failure_rate": 1.5}, "failure_rate"),
        ({**MINIMAL, "failure_rate": -0.1}, "failure_rate"),
        ({**MINIMAL, "seed": "abc"}, "seed"),
        ({**MINIMAL, "fail_chunk_indices": [0, -1]}, "fail_chunk_indices"),
        ({**MINIMAL, "added_latency_ms": -1}, "added_latency_ms"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(MockAdapterConfig, data, field)


# -- the adapter ---------------------------------------------------------------------------

FAST = 1000.0  # GiB/s: simulated transfers take nanoseconds


def mock(sleep: Any = None, **fields: Any) -> MockL2Adapter:
    config = MockAdapterConfig.model_validate({**MINIMAL, "mock_bandwidth_gb": FAST, **fields})
    adapter = MockL2Adapter(config) if sleep is None else MockL2Adapter(config, sleep=sleep)
    adapter.start()
    return adapter


class TestMockConformance(L2AdapterConformance):
    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        # The mock has no "unlimited": 0 stands for far more than any test stores.
        size_gb = capacity_bytes / GIB if capacity_bytes else 1.0
        config = MockAdapterConfig.model_validate(
            {**MINIMAL, "max_size_gb": size_gb, "mock_bandwidth_gb": FAST, "format": object_format}
        )
        return MockL2Adapter(config)

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        assert isinstance(adapter, MockL2Adapter)
        return adapter.tamper(key)

    def test_unlimited_capacity_reports_minus_one(self, adapter: L2AdapterV1) -> None:
        pytest.skip("the mock always has a capacity (max_size_gb is required and > 0)")


def test_build_mock_validates_and_starts() -> None:
    adapter = build_mock({**MINIMAL, "format": "raw"})
    try:
        assert adapter.capacity_bytes == 4 * GIB
        assert adapter.object_format == "raw"
        assert adapter.usage().usage_fraction == 0.0
    finally:
        adapter.close()


def test_a_store_that_does_not_fit_fails_and_is_counted() -> None:
    size = 1 << 20
    capacity = 2 * (size + HEADER_SIZE)
    adapter = mock(max_size_gb=capacity / GIB)
    try:
        assert adapter.capacity_bytes == capacity
        keys = make_keys(3)
        assert wait(adapter.submit_store(keys, make_payloads([size] * 3))) == [True, True, False]
        status = adapter.status()
        assert status["refused_full"] == 1
        assert status["errors"] == 0
        assert status["mock"]["held_bytes"] == capacity == status["used_bytes"]
        # Replacing a stored key with one of the same size fits.
        assert wait(adapter.submit_store(keys[:1], make_payloads([size], seed=5))) == [True]
        assert adapter.usage().used_bytes == capacity
    finally:
        adapter.close()


def test_the_backend_refuses_to_overfill_even_if_the_core_check_is_bypassed() -> None:
    adapter = mock(max_size_gb=1000 / GIB)
    try:
        adapter._put(make_keys(1)[0], [b"x" * 600])
        with pytest.raises(DoesNotFit):
            adapter._put(make_keys(1, seed=1)[0], [b"y" * 600])
        adapter._put(make_keys(1)[0], [b"z" * 1000])  # replacing a key frees its bytes first
        assert adapter.status()["mock"]["held_bytes"] == 1000
    finally:
        adapter.close()


def test_failure_rate_is_deterministic_for_a_seed() -> None:
    keys = make_keys(400)
    sizes = [16] * len(keys)
    payloads = make_payloads(sizes)

    def failed(seed: int) -> set[int]:
        adapter = mock(failure_rate=0.25, seed=seed)
        try:
            assert wait(adapter.submit_store(keys, payloads)) == [True] * len(keys)
            # A faulted key is still found: only its load fails.
            assert wait(adapter.submit_lookup_and_lock(keys)) == [True] * len(keys)
            adapter.unlock(keys)
            buffers = empty_buffers(sizes)
            results = wait(adapter.submit_load(keys, buffers))
            for buffer, ok, payload in zip(buffers, results, payloads, strict=True):
                assert bytes(buffer) == payload if ok else untouched(buffer)
            # The same key fails again, whatever its position and batch.
            again = wait(adapter.submit_load(keys[::-1], empty_buffers(sizes)))
            assert again[::-1] == results
            assert adapter.status()["mock"]["fault_inject"]["injected_failures"] == 2 * sum(
                not ok for ok in results
            )
            return {i for i, ok in enumerate(results) if not ok}
        finally:
            adapter.close()

    first = failed(7)
    assert failed(7) == first
    assert failed(8) != first
    assert 60 <= len(first) <= 140  # 25% of 400, loosely


def test_fail_chunk_indices_are_positions_in_each_load_batch() -> None:
    adapter = mock(fail_chunk_indices=[0, 2])
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
        # Position counts within the batch, so a key fails or loads depending on where it is.
        buffers = empty_buffers([32] * 2)
        assert wait(adapter.submit_load([keys[1], keys[0]], buffers)) == [False, True]
        assert untouched(buffers[0])
        assert bytes(buffers[1]) == payloads[0]
        assert wait(adapter.submit_load(keys[3:], empty_buffers([32]))) == [False]
        # Stores and lookups are never faulted.
        assert wait(adapter.submit_lookup_and_lock(keys)) == [True] * 4
        adapter.unlock(keys)
    finally:
        adapter.close()


def test_every_completion_takes_at_least_the_added_latency() -> None:
    adapter = mock(added_latency_ms=30)
    try:
        keys = make_keys(2)
        for submit in (
            lambda: adapter.submit_store(keys, make_payloads([8, 8])),
            lambda: adapter.submit_lookup_and_lock(keys),
            lambda: adapter.submit_load(keys, empty_buffers([8, 8])),
        ):
            began = time.monotonic()
            assert wait(submit()) == [True, True]
            assert time.monotonic() - began >= 0.030
    finally:
        adapter.close()


def test_bandwidth_delays_completion_by_bytes_moved() -> None:
    delays: list[float] = []
    adapter = mock(sleep=delays.append, mock_bandwidth_gb=2, added_latency_ms=1)
    try:
        keys = make_keys(2)
        size = 1 << 20
        assert wait(adapter.submit_store(keys, make_payloads([size, size]))) == [True, True]
        assert wait(adapter.submit_lookup_and_lock(keys)) == [True, True]
        # The second key misses (wrong size): only the first one's bytes moved.
        assert wait(adapter.submit_load(keys, empty_buffers([size, 5]))) == [True, False]
        per_mib = size / (2 * GIB)
        assert delays == pytest.approx([0.001 + 2 * per_mib, 0.001, 0.001 + per_mib])
    finally:
        adapter.close()


def test_real_sleep_follows_the_bandwidth() -> None:
    adapter = mock(mock_bandwidth_gb=0.25)  # 8 MiB take 31 ms
    try:
        keys = make_keys(1)
        began = time.monotonic()
        assert wait(adapter.submit_store(keys, make_payloads([8 << 20]))) == [True]
        assert time.monotonic() - began >= (8 << 20) / (0.25 * GIB)
    finally:
        adapter.close()


def test_tamper_of_an_unknown_key_is_refused() -> None:
    adapter = mock()
    try:
        assert adapter.tamper(make_keys(1)[0]) is False
    finally:
        adapter.close()
