"""Tests of the lmcache-l2-nixl-store-dynamic plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_nixl_store_dynamic.config import NixlStoreDynamicAdapterConfig

from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_readme_configures,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"
PARAMS = {"file_path": "/data/lmcache/l2", "use_direct_io": "false", "max_capacity_gb": "500"}
MINIMAL: dict[str, Any] = {
    "type": "nixl_store_dynamic",
    "backend": "POSIX",
    "backend_params": PARAMS,
}


def test_extra_backend_params_are_kept() -> None:
    params = {**PARAMS, "use_direct_io": "TRUE", "file_size": "1048576"}
    config = NixlStoreDynamicAdapterConfig.model_validate({**MINIMAL, "backend_params": params})
    assert config.backend_params == params


@pytest.mark.parametrize("key", ["file_path", "use_direct_io", "max_capacity_gb"])
def test_each_required_param_is_named_when_missing(key: str) -> None:
    error = assert_config_rejects(
        NixlStoreDynamicAdapterConfig, {**MINIMAL, "backend_params": without(PARAMS, key)}, key
    )
    assert f"backend_params is missing {key}" in str(error)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**MINIMAL, "pool_size": 8}, "pool_size"),
        (without(MINIMAL, "backend"), "backend"),
        (without(MINIMAL, "backend_params"), "backend_params"),
        ({**MINIMAL, "backend": "OBJ"}, "backend"),
        ({**MINIMAL, "backend_params": {**PARAMS, "file_path": ""}}, "file_path"),
        ({**MINIMAL, "backend_params": {**PARAMS, "use_direct_io": "maybe"}}, "use_direct_io"),
        ({**MINIMAL, "backend_params": {**PARAMS, "max_capacity_gb": "0"}}, "max_capacity_gb"),
        ({**MINIMAL, "backend_params": {**PARAMS, "max_capacity_gb": "lots"}}, "max_capacity_gb"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(NixlStoreDynamicAdapterConfig, data, field)


def test_obj_is_refused_saying_why_and_what_to_use() -> None:
    error = assert_config_rejects(
        NixlStoreDynamicAdapterConfig, {**MINIMAL, "backend": "OBJ"}, "backend"
    )
    assert "cannot list or delete objects" in str(error)
    assert "nixl_store with backend OBJ" in str(error)


def test_readme_examples_validate_and_fields_are_documented() -> None:
    assert_readme_configures(NixlStoreDynamicAdapterConfig, README)
