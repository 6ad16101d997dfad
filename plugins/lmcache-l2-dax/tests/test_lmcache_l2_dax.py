"""Tests of the lmcache-l2-dax plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_dax.config import DaxAdapterConfig, DaxDevice

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_readme_configures,
    assert_registered_plugin,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"
SINGLE: dict[str, Any] = {
    "type": "dax",
    "slot_bytes": 2097152,
    "device_path": "/dev/dax0.0",
    "max_dax_size_gb": 64,
}
DEVICES: dict[str, Any] = {
    "type": "dax",
    "slot_bytes": 2097152,
    "devices": [
        {"device_path": "/dev/dax0.0", "max_dax_size_gb": 64},
        {"device_path": "/dev/dax1.0", "max_dax_size_gb": 32},
    ],
}


def test_registered_and_built_through_the_registry(tmp_path: Path) -> None:
    from lmcache_core.plugin.registry import PluginRegistry

    spec = assert_registered_plugin(PluginKind.L2_ADAPTER, "dax", "lmcache-l2-dax")
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is DaxAdapterConfig
    registry = PluginRegistry(strict=True)
    raw = {**SINGLE, "device_path": str(tmp_path / "dax.img"), "max_dax_size_gb": 1 / 256}
    adapter = registry.build(PluginKind.L2_ADAPTER, "dax", DaxAdapterConfig.model_validate(raw))
    try:
        adapter.start()
        assert adapter.status()["is_healthy"] is True
        assert adapter.usage().capacity_bytes == 2 * 2097152
    finally:
        adapter.close()


def test_readme_examples_validate_and_fields_are_documented() -> None:
    assert_readme_configures(DaxAdapterConfig, README)


def test_both_forms_give_a_device_list() -> None:
    single = DaxAdapterConfig.model_validate(SINGLE)
    assert single.device_list() == [DaxDevice(device_path="/dev/dax0.0", max_dax_size_gb=64)]
    assert single.hotplug_enabled is False
    several = DaxAdapterConfig.model_validate(DEVICES)
    assert [d.device_path for d in several.device_list()] == ["/dev/dax0.0", "/dev/dax1.0"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**SINGLE, "hotplug": True}, "hotplug"),
        (without(SINGLE, "slot_bytes"), "slot_bytes"),
        ({**SINGLE, "slot_bytes": 0}, "slot_bytes"),
        ({**SINGLE, "max_dax_size_gb": -1}, "max_dax_size_gb"),
        (without(SINGLE, "max_dax_size_gb"), "max_dax_size_gb"),
        (without(SINGLE, "device_path", "max_dax_size_gb"), "devices"),
        ({**SINGLE, "devices": DEVICES["devices"]}, "devices"),
        ({**DEVICES, "max_dax_size_gb": 8}, "devices"),
        ({**DEVICES, "devices": []}, "devices"),
        ({**DEVICES, "devices": [DEVICES["devices"][0]] * 2}, "devices"),
        ({**DEVICES, "devices": [{"device_path": "/dev/dax0.0"}]}, "max_dax_size_gb"),
        ({**DEVICES, "devices": [{"device_path": "", "max_dax_size_gb": 1}]}, "device_path"),
        ({**DEVICES, "devices": [{**DEVICES["devices"][0], "numa": 1}]}, "numa"),
        ({**SINGLE, "num_load_workers": 0}, "num_load_workers"),
        ({**SINGLE, "num_store_workers": 0}, "num_store_workers"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(DaxAdapterConfig, data, field)
