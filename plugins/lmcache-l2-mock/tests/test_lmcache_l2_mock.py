"""Tests of the lmcache-l2-mock plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_mock.config import MockAdapterConfig

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_pending_plugin,
    assert_readme_documents_fields,
    readme_adapter_examples,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"
MINIMAL: dict[str, Any] = {"type": "mock", "max_size_gb": 4, "mock_bandwidth_gb": 10}


def test_registered_and_pending() -> None:
    spec = assert_pending_plugin(PluginKind.L2_ADAPTER, "mock", "lmcache-l2-mock", "L2 issue (#4)")
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is MockAdapterConfig


def test_readme_examples_validate_and_fields_are_documented() -> None:
    for example in readme_adapter_examples(README):
        MockAdapterConfig.model_validate(example)
    assert_readme_documents_fields(MockAdapterConfig, README)


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
