"""Tests of the lmcache-l2-fs-native plugin distribution: registration and config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_fs_native.adapter import FsNativeL2Adapter
from lmcache_l2_fs_native.config import FSNativeAdapterConfig

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_readme_configures,
    assert_registered_plugin,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"
MINIMAL: dict[str, Any] = {"type": "fs_native", "base_path": "/data/lmcache/l2"}


def test_registered_and_built_through_the_registry(tmp_path: Path) -> None:
    from lmcache_core.plugin.registry import PluginRegistry

    spec = assert_registered_plugin(PluginKind.L2_ADAPTER, "fs_native", "lmcache-l2-fs-native")
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is FSNativeAdapterConfig
    registry = PluginRegistry(strict=True)
    raw = {**MINIMAL, "base_path": str(tmp_path), "num_workers": 2, "min_free_bytes": 1}
    config = FSNativeAdapterConfig.model_validate(raw)
    adapter = registry.build(PluginKind.L2_ADAPTER, "fs_native", config)
    try:
        assert isinstance(adapter, FsNativeL2Adapter)
        adapter.start()
        status = adapter.status()
        assert status["is_healthy"] is True
        assert status["completion"] == "event_fd"
        assert status["deletes"] == "supported"
        assert status["min_free_bytes"] == 1
    finally:
        adapter.close()


def test_readme_examples_validate_and_fields_are_documented() -> None:
    assert_readme_configures(FSNativeAdapterConfig, README)


def test_defaults() -> None:
    config = FSNativeAdapterConfig.model_validate(MINIMAL)
    assert config.num_workers == 4
    assert config.relative_tmp_dir == ""
    assert config.use_odirect is False
    assert config.read_ahead_size is None
    assert config.max_capacity_gb == 0
    assert config.high_watermark == 1.0
    assert config.min_free_bytes == 0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**MINIMAL, "workers": 4}, "workers"),
        (without(MINIMAL, "base_path"), "base_path"),
        ({**MINIMAL, "num_workers": 0}, "num_workers"),
        ({**MINIMAL, "relative_tmp_dir": "/abs"}, "relative_tmp_dir"),
        ({**MINIMAL, "read_ahead_size": -4096}, "read_ahead_size"),
        ({**MINIMAL, "max_capacity_gb": -0.5}, "max_capacity_gb"),
        ({**MINIMAL, "high_watermark": 0}, "high_watermark"),
        ({**MINIMAL, "min_free_bytes": -1}, "min_free_bytes"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(FSNativeAdapterConfig, data, field)
