"""Tests of the lmcache-l2-plugin plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_plugin.config import PluginAdapterConfig

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_readme_configures,
    assert_registered_plugin,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"
MINIMAL: dict[str, Any] = {
    "type": "plugin",
    "module_path": "pkg.adapters",
    "class_name": "MyAdapter",
}


def test_registered_and_implemented() -> None:
    spec = assert_registered_plugin(PluginKind.L2_ADAPTER, "plugin", "lmcache-l2-plugin")
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is PluginAdapterConfig


def test_readme_examples_validate_and_fields_are_documented() -> None:
    assert_readme_configures(PluginAdapterConfig, README)


def test_defaults_and_free_form_params() -> None:
    config = PluginAdapterConfig.model_validate(MINIMAL)
    assert config.adapter_params == {}
    assert config.config_class_name is None
    params = {"endpoint": "10.0.0.5:9000", "retries": 3, "nested": {"a": [1, 2]}}
    config = PluginAdapterConfig.model_validate({**MINIMAL, "adapter_params": params})
    assert config.adapter_params == params


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**MINIMAL, "params": {}}, "params"),
        (without(MINIMAL, "module_path"), "module_path"),
        (without(MINIMAL, "class_name"), "class_name"),
        ({**MINIMAL, "module_path": "pkg/adapters.py"}, "module_path"),
        ({**MINIMAL, "module_path": "pkg..adapters"}, "module_path"),
        ({**MINIMAL, "class_name": "My Adapter"}, "class_name"),
        ({**MINIMAL, "config_class_name": "1Config"}, "config_class_name"),
        ({**MINIMAL, "adapter_params": ["a"]}, "adapter_params"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(PluginAdapterConfig, data, field)
