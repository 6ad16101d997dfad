"""Tests of the lmcache-l2-fs plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_fs.config import FSAdapterConfig

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_readme_configures,
    assert_registered_plugin,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"
MINIMAL: dict[str, Any] = {"type": "fs", "base_path": "/data/lmcache/l2"}


def test_registered_and_built_through_the_registry(tmp_path: Path) -> None:
    from lmcache_core.plugin.registry import PluginRegistry

    spec = assert_registered_plugin(PluginKind.L2_ADAPTER, "fs", "lmcache-l2-fs")
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is FSAdapterConfig
    registry = PluginRegistry(strict=True)
    raw = {**MINIMAL, "base_path": str(tmp_path)}
    adapter = registry.build(PluginKind.L2_ADAPTER, "fs", FSAdapterConfig.model_validate(raw))
    try:
        adapter.start()
        assert adapter.status()["is_healthy"] is True
    finally:
        adapter.close()


def test_readme_examples_validate_and_fields_are_documented() -> None:
    assert_readme_configures(FSAdapterConfig, README)


def test_defaults() -> None:
    config = FSAdapterConfig.model_validate(MINIMAL)
    assert config.relative_tmp_dir == ""
    assert config.read_ahead_size is None
    assert config.use_odirect is False
    assert config.max_capacity_gb == 0
    assert config.eviction is None


def test_eviction_block() -> None:
    config = FSAdapterConfig.model_validate({**MINIMAL, "eviction": {"eviction_policy": "LRU"}})
    assert config.eviction is not None
    assert config.eviction.trigger_watermark == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**MINIMAL, "base_dir": "/data"}, "base_dir"),
        (without(MINIMAL, "base_path"), "base_path"),
        ({**MINIMAL, "base_path": ""}, "base_path"),
        ({**MINIMAL, "relative_tmp_dir": "/tmp"}, "relative_tmp_dir"),
        ({**MINIMAL, "read_ahead_size": 0}, "read_ahead_size"),
        ({**MINIMAL, "use_odirect": "sometimes"}, "use_odirect"),
        ({**MINIMAL, "max_capacity_gb": -1}, "max_capacity_gb"),
        ({**MINIMAL, "eviction": {"trigger_watermark": 1.5}}, "trigger_watermark"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(FSAdapterConfig, data, field)
