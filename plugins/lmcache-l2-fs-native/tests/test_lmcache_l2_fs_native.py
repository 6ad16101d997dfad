"""Tests of the lmcache-l2-fs-native plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_fs_native.config import FSNativeAdapterConfig

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_pending_plugin,
    assert_readme_documents_fields,
    readme_adapter_examples,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"
MINIMAL: dict[str, Any] = {"type": "fs_native", "base_path": "/data/lmcache/l2"}


def test_registered_and_pending() -> None:
    spec = assert_pending_plugin(
        PluginKind.L2_ADAPTER, "fs_native", "lmcache-l2-fs-native", "lmcache.lmcache_fs"
    )
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is FSNativeAdapterConfig


def test_readme_examples_validate_and_fields_are_documented() -> None:
    for example in readme_adapter_examples(README):
        FSNativeAdapterConfig.model_validate(example)
    assert_readme_documents_fields(FSNativeAdapterConfig, README)


def test_defaults() -> None:
    config = FSNativeAdapterConfig.model_validate(MINIMAL)
    assert config.num_workers == 4
    assert config.relative_tmp_dir == ""
    assert config.use_odirect is False
    assert config.read_ahead_size is None
    assert config.max_capacity_gb == 0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**MINIMAL, "workers": 4}, "workers"),
        (without(MINIMAL, "base_path"), "base_path"),
        ({**MINIMAL, "num_workers": 0}, "num_workers"),
        ({**MINIMAL, "relative_tmp_dir": "/abs"}, "relative_tmp_dir"),
        ({**MINIMAL, "read_ahead_size": -4096}, "read_ahead_size"),
        ({**MINIMAL, "max_capacity_gb": -0.5}, "max_capacity_gb"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(FSNativeAdapterConfig, data, field)
