"""Tests of the lmcache-l2-mooncake-store plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmcache_l2_mooncake_store.plugin
from lmcache_l2_mooncake_store.config import MooncakeStoreAdapterConfig

from lmcache_core.testing.unavailable_adapter import UnavailableAdapterChecks

README = Path(__file__).resolve().parents[1] / "README.md"
MINIMAL: dict[str, Any] = {"type": "mooncake_store"}


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


class TestMooncakeStoreUnavailable(UnavailableAdapterChecks):
    adapter = "mooncake_store"
    distribution = "lmcache-l2-mooncake-store"
    plugin = lmcache_l2_mooncake_store.plugin
    dependency = lmcache_l2_mooncake_store.plugin.DEPENDENCY
    reason_fragment = "Python package 'mooncake-transfer-engine'"
    config_model = MooncakeStoreAdapterConfig
    readme = README
    valid_config = {**MINIMAL, "master_server_address": "127.0.0.1:50051"}
    invalid_configs = [
        ({**MINIMAL, "num_workers": 0}, "num_workers"),
        ({**MINIMAL, "per_op_workers": {"scan": 2}}, "per_op_workers"),
        ({**MINIMAL, "per_op_workers": {"store": 0}}, "per_op_workers"),
        ({**MINIMAL, "eviction": {"policy": "LRU"}}, "policy"),
    ]
