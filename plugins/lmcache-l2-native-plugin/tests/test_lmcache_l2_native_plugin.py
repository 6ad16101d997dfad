"""Tests of the lmcache-l2-native-plugin plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_native_plugin.config import NativePluginAdapterConfig

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_readme_configures,
    assert_registered_plugin,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"
MINIMAL: dict[str, Any] = {
    "type": "native_plugin",
    "module_path": "vendor.native_kv",
    "class_name": "NativeClient",
}


def test_registered_and_implemented() -> None:
    spec = assert_registered_plugin(
        PluginKind.L2_ADAPTER, "native_plugin", "lmcache-l2-native-plugin"
    )
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is NativePluginAdapterConfig


def test_readme_examples_validate_and_fields_are_documented() -> None:
    assert_readme_configures(NativePluginAdapterConfig, README)


def test_defaults() -> None:
    config = NativePluginAdapterConfig.model_validate(MINIMAL)
    assert config.adapter_params == {}
    assert config.max_capacity_gb == 0
    assert config.format == "framed"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**MINIMAL, "config_class_name": "X"}, "config_class_name"),
        (without(MINIMAL, "module_path"), "module_path"),
        (without(MINIMAL, "class_name"), "class_name"),
        ({**MINIMAL, "module_path": "-vendor"}, "module_path"),
        ({**MINIMAL, "class_name": "Native.Client"}, "class_name"),
        ({**MINIMAL, "adapter_params": "servers=1"}, "adapter_params"),
        ({**MINIMAL, "max_capacity_gb": -1}, "max_capacity_gb"),
        ({**MINIMAL, "max_capacity_gb": "inf"}, "max_capacity_gb"),
        ({**MINIMAL, "format": "zip"}, "format"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(NativePluginAdapterConfig, data, field)
