"""Tests of the lmcache-l2-raw-block plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_raw_block.config import RawBlockAdapterConfig

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_readme_configures,
    assert_registered_plugin,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"
MINIMAL: dict[str, Any] = {"type": "raw_block", "device_path": "/dev/nvme1n1", "slot_bytes": 8192}


def test_registered_and_built_through_the_registry(tmp_path: Path) -> None:
    from lmcache_core.plugin.registry import PluginRegistry

    spec = assert_registered_plugin(PluginKind.L2_ADAPTER, "raw_block", "lmcache-l2-raw-block")
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is RawBlockAdapterConfig
    registry = PluginRegistry(strict=True)
    path = tmp_path / "device.img"
    raw = {
        **MINIMAL,
        "device_path": str(path),
        "meta_total_bytes": 16 * 4096,
        "capacity_bytes": 16 * 4096 + 3 * 8192,
    }
    config = RawBlockAdapterConfig.model_validate(raw)
    adapter = registry.build(PluginKind.L2_ADAPTER, "raw_block", config)
    try:
        adapter.start()
        status = adapter.status()
        assert status["is_healthy"] is True
        assert (status["total_slots"], status["use_odirect"]) == (3, True)
        # Three slots of 4096 payload bytes each, plus the frame kept in the slot header.
        assert adapter.usage().capacity_bytes == 3 * (4096 + 48)
        assert path.stat().st_size == 16 * 4096 + 3 * 8192
    finally:
        adapter.close()


def test_readme_examples_validate_and_fields_are_documented() -> None:
    assert_readme_configures(RawBlockAdapterConfig, README)


def test_reference_defaults() -> None:
    config = RawBlockAdapterConfig.model_validate(MINIMAL)
    assert config.capacity_bytes == 0
    assert config.use_odirect is True
    assert (config.block_align, config.header_bytes) == (4096, 4096)
    assert config.meta_total_bytes == 256 * 1024 * 1024
    assert (config.meta_magic, config.meta_version) == ("LMCIDX01", 1)
    assert config.meta_checkpoint_interval_sec == 60
    assert config.meta_idle_quiet_ms == 100
    assert (config.io_engine, config.iouring_queue_depth) == ("posix", 256)
    workers = (config.num_store_workers, config.num_lookup_workers, config.num_load_workers)
    assert workers == (2, 1, 4)


def test_small_alignment_layout() -> None:
    data = {
        **MINIMAL,
        "block_align": 512,
        "header_bytes": 512,
        "slot_bytes": 1024,
        "meta_total_bytes": 4096,
        "capacity_bytes": 5120,
        "max_data_transfer_size": 1024,
    }
    assert RawBlockAdapterConfig.model_validate(data).slot_bytes == 1024
    raw = {**data, "format": "raw", "use_odirect": False, "header_bytes": 24}
    assert RawBlockAdapterConfig.model_validate(raw).header_bytes == 24


def test_block_align_must_be_a_power_of_two() -> None:
    layout = {"block_align": 3072, "header_bytes": 3072, "slot_bytes": 6144}
    data = {**MINIMAL, **layout, "meta_total_bytes": 3072 * 1024}
    error = assert_config_rejects(RawBlockAdapterConfig, data, "block_align")
    assert "power of two" in str(error)
    assert RawBlockAdapterConfig.model_validate({**data, "block_align": 1024}).block_align == 1024


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**MINIMAL, "capacity_gb": 1}, "capacity_gb"),
        (without(MINIMAL, "device_path"), "device_path"),
        (without(MINIMAL, "slot_bytes"), "slot_bytes"),
        ({**MINIMAL, "slot_bytes": -8192}, "slot_bytes"),
        ({**MINIMAL, "slot_bytes": 10000}, "slot_bytes"),
        ({**MINIMAL, "slot_bytes": 4096}, "slot_bytes"),
        ({**MINIMAL, "header_bytes": 8}, "header_bytes"),
        ({**MINIMAL, "meta_total_bytes": 1000}, "meta_total_bytes"),
        ({**MINIMAL, "capacity_bytes": -1}, "capacity_bytes"),
        ({**MINIMAL, "capacity_bytes": 4096}, "capacity_bytes"),
        ({**MINIMAL, "meta_magic": "LMC"}, "meta_magic"),
        ({**MINIMAL, "meta_version": 0}, "meta_version"),
        ({**MINIMAL, "meta_checkpoint_interval_sec": 0}, "meta_checkpoint_interval_sec"),
        ({**MINIMAL, "meta_idle_quiet_ms": -1}, "meta_idle_quiet_ms"),
        ({**MINIMAL, "io_engine": "aio"}, "io_engine"),
        ({**MINIMAL, "iouring_queue_depth": 0}, "iouring_queue_depth"),
        ({**MINIMAL, "use_uring_cmd": True}, "use_uring_cmd"),
        ({**MINIMAL, "max_data_transfer_size": 0}, "max_data_transfer_size"),
        ({**MINIMAL, "max_data_transfer_size": 5000}, "max_data_transfer_size"),
        ({**MINIMAL, "fdp_placement_ids": [1]}, "fdp_placement_ids"),
        ({**MINIMAL, "fdp_enabled": True, "fdp_placement_ids": [-1]}, "fdp_placement_ids"),
        ({**MINIMAL, "meta_total_bytes": 8192}, "meta_total_bytes"),
        ({**MINIMAL, "meta_magic": "LMCIDX\u00e90"}, "meta_magic"),
        ({**MINIMAL, "header_bytes": 64, "use_odirect": False}, "header_bytes"),
        ({**MINIMAL, "header_bytes": 1024, "slot_bytes": 8192}, "header_bytes"),
        # Documented options this implementation cannot honour are refused, never ignored.
        ({**MINIMAL, "io_engine": "io_uring"}, "io_engine"),
        ({**MINIMAL, "iouring_queue_depth": 128}, "iouring_queue_depth"),
        ({**MINIMAL, "fdp_enabled": True}, "fdp_enabled"),
        ({**MINIMAL, "enable_zero_copy": True}, "enable_zero_copy"),
        ({**MINIMAL, "shared": True}, "shared"),
        (
            {**MINIMAL, "persist_enabled": False, "load_checkpoint_on_init": True},
            "load_checkpoint_on_init",
        ),
        (
            {**MINIMAL, "meta_enable_periodic": False, "meta_idle_quiet_ms": 5},
            "meta_idle_quiet_ms",
        ),
        (
            {**MINIMAL, "meta_enable_periodic": False, "meta_checkpoint_interval_sec": 5},
            "meta_checkpoint_interval_sec",
        ),
        ({**MINIMAL, "num_store_workers": 0}, "num_store_workers"),
        ({**MINIMAL, "num_lookup_workers": 0}, "num_lookup_workers"),
        ({**MINIMAL, "num_load_workers": -1}, "num_load_workers"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(RawBlockAdapterConfig, data, field)
