"""Tests of the lmcache-l2-nixl-store plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmcache_l2_nixl_store.plugin
import pytest
from lmcache_l2_nixl_store.config import NixlStoreAdapterConfig

from lmcache_core.testing.plugin_checks import without
from lmcache_core.testing.unavailable_adapter import UnavailableAdapterChecks

README = Path(__file__).resolve().parents[1] / "README.md"
# The --l2-adapter of the configuration reference's Full Example, verbatim.
REFERENCE_EXAMPLE: dict[str, Any] = {
    "type": "nixl_store",
    "backend": "POSIX",
    "backend_params": {"file_path": "/data/lmcache/l2", "use_direct_io": "false"},
    "pool_size": 64,
}


def test_reference_example_validates() -> None:
    config = NixlStoreAdapterConfig.model_validate(REFERENCE_EXAMPLE)
    assert (config.backend, config.pool_size) == ("POSIX", 64)
    assert config.backend_params["file_path"] == "/data/lmcache/l2"


@pytest.mark.parametrize("backend", ["GDS", "GDS_MT", "POSIX", "HF3FS", "OBJ"])
def test_every_backend(backend: str) -> None:
    data = {**without(REFERENCE_EXAMPLE, "backend_params"), "backend": backend}
    assert NixlStoreAdapterConfig.model_validate(data).backend_params == {}


class TestNixlStoreUnavailable(UnavailableAdapterChecks):
    adapter = "nixl_store"
    distribution = "lmcache-l2-nixl-store"
    plugin = lmcache_l2_nixl_store.plugin
    dependency = lmcache_l2_nixl_store.plugin.DEPENDENCY
    reason_fragment = "Python package 'nixl'"
    config_model = NixlStoreAdapterConfig
    readme = README
    valid_config = REFERENCE_EXAMPLE
    invalid_configs = [
        ({**REFERENCE_EXAMPLE, "pool": 64}, "pool"),
        (without(REFERENCE_EXAMPLE, "backend"), "backend"),
        (without(REFERENCE_EXAMPLE, "pool_size"), "pool_size"),
        ({**REFERENCE_EXAMPLE, "backend": "posix_fs"}, "backend"),
        ({**REFERENCE_EXAMPLE, "pool_size": 0}, "pool_size"),
        ({**REFERENCE_EXAMPLE, "backend_params": {"use_direct_io": False}}, "backend_params"),
    ]
