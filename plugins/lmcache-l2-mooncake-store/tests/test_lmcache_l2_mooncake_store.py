"""Tests of the lmcache-l2-mooncake-store plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_mooncake_store.config import MooncakeStoreAdapterConfig

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_pending_plugin,
    assert_readme_documents_fields,
    readme_adapter_examples,
)

README = Path(__file__).resolve().parents[1] / "README.md"
MINIMAL: dict[str, Any] = {"type": "mooncake_store"}


def test_registered_and_pending() -> None:
    spec = assert_pending_plugin(
        PluginKind.L2_ADAPTER,
        "mooncake_store",
        "lmcache-l2-mooncake-store",
        "Python package 'mooncake-transfer-engine'",
    )
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is MooncakeStoreAdapterConfig


def test_readme_examples_validate_and_fields_are_documented() -> None:
    for example in readme_adapter_examples(README):
        MooncakeStoreAdapterConfig.model_validate(example)
    assert_readme_documents_fields(MooncakeStoreAdapterConfig, README)


def test_other_keys_pass_through_verbatim() -> None:
    setup = {"local_hostname": "10.0.0.2", "protocol": "rdma", "global_segment_size": 3355443200}
    config = MooncakeStoreAdapterConfig.model_validate({**MINIMAL, **setup, "num_workers": 2})
    assert config.mooncake_setup() == setup
    assert config.num_workers == 2


def test_defaults() -> None:
    config = MooncakeStoreAdapterConfig.model_validate(MINIMAL)
    assert config.num_workers == 4
    assert config.per_op_workers == {}
    assert config.mooncake_setup() == {}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**MINIMAL, "num_workers": 0}, "num_workers"),
        ({**MINIMAL, "per_op_workers": {"scan": 2}}, "per_op_workers"),
        ({**MINIMAL, "per_op_workers": {"store": 0}}, "per_op_workers"),
        ({**MINIMAL, "eviction": {"policy": "LRU"}}, "policy"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(MooncakeStoreAdapterConfig, data, field)
