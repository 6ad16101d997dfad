"""Tests of the lmcache-l2-fs-native plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmcache_l2_fs_native.plugin
from lmcache_l2_fs_native.config import FSNativeAdapterConfig

from lmcache_core.testing.plugin_checks import without
from lmcache_core.testing.unavailable_adapter import UnavailableAdapterChecks

README = Path(__file__).resolve().parents[1] / "README.md"
MINIMAL: dict[str, Any] = {"type": "fs_native", "base_path": "/data/lmcache/l2"}


def test_defaults() -> None:
    config = FSNativeAdapterConfig.model_validate(MINIMAL)
    assert config.num_workers == 4
    assert config.relative_tmp_dir == ""
    assert config.use_odirect is False
    assert config.read_ahead_size is None
    assert config.max_capacity_gb == 0


class TestFSNativeUnavailable(UnavailableAdapterChecks):
    adapter = "fs_native"
    distribution = "lmcache-l2-fs-native"
    plugin = lmcache_l2_fs_native.plugin
    dependency = lmcache_l2_fs_native.plugin.DEPENDENCY
    reason_fragment = "lmcache.lmcache_fs"
    config_model = FSNativeAdapterConfig
    readme = README
    valid_config = MINIMAL
    invalid_configs = [
        ({**MINIMAL, "workers": 4}, "workers"),
        (without(MINIMAL, "base_path"), "base_path"),
        ({**MINIMAL, "num_workers": 0}, "num_workers"),
        ({**MINIMAL, "relative_tmp_dir": "/abs"}, "relative_tmp_dir"),
        ({**MINIMAL, "read_ahead_size": -4096}, "read_ahead_size"),
        ({**MINIMAL, "max_capacity_gb": -0.5}, "max_capacity_gb"),
    ]
