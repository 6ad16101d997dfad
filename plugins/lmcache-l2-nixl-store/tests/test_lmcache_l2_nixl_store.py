"""Tests of the lmcache-l2-nixl-store plugin distribution: the configuration and its spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmcache_l2_nixl_store.plugin
import pytest
from lmcache_l2_nixl_store.config import NixlStoreAdapterConfig

from lmcache_core.plugin import L2AdapterSpec
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_readme_configures,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"
# The --l2-adapter of the configuration reference's Full Example, verbatim.
REFERENCE_EXAMPLE: dict[str, Any] = {
    "type": "nixl_store",
    "backend": "POSIX",
    "backend_params": {"file_path": "/data/lmcache/l2", "use_direct_io": "false"},
    "pool_size": 64,
}
PARAMS = REFERENCE_EXAMPLE["backend_params"]


def test_reference_example_validates() -> None:
    config = NixlStoreAdapterConfig.model_validate(REFERENCE_EXAMPLE)
    assert (config.backend, config.pool_size) == ("POSIX", 64)
    assert config.backend_params["file_path"] == "/data/lmcache/l2"


@pytest.mark.parametrize("backend", ["GDS", "GDS_MT", "POSIX", "HF3FS", "OBJ"])
def test_every_backend(backend: str) -> None:
    config = NixlStoreAdapterConfig.model_validate({**REFERENCE_EXAMPLE, "backend": backend})
    assert config.backend == backend


def test_obj_needs_no_file_params_and_keeps_its_own() -> None:
    params = {"bucket": "kvcache", "endpoint_override": "http://127.0.0.1:9000"}
    data = {**REFERENCE_EXAMPLE, "backend": "OBJ", "backend_params": params}
    assert NixlStoreAdapterConfig.model_validate(data).backend_params == params


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**REFERENCE_EXAMPLE, "pool": 64}, "pool"),
        (without(REFERENCE_EXAMPLE, "backend"), "backend"),
        (without(REFERENCE_EXAMPLE, "pool_size"), "pool_size"),
        ({**REFERENCE_EXAMPLE, "backend": "posix_fs"}, "backend"),
        ({**REFERENCE_EXAMPLE, "pool_size": 0}, "pool_size"),
        ({**REFERENCE_EXAMPLE, "backend_params": {"use_direct_io": False}}, "backend_params"),
        ({**REFERENCE_EXAMPLE, "backend_params": without(PARAMS, "file_path")}, "file_path"),
        (
            {**REFERENCE_EXAMPLE, "backend_params": without(PARAMS, "use_direct_io")},
            "use_direct_io",
        ),
        ({**REFERENCE_EXAMPLE, "backend_params": {**PARAMS, "file_path": ""}}, "file_path"),
        (
            {**REFERENCE_EXAMPLE, "backend_params": {**PARAMS, "use_direct_io": "yes"}},
            "use_direct_io",
        ),
        ({**REFERENCE_EXAMPLE, "backend_params": {**PARAMS, "file_size": "0"}}, "file_size"),
        ({**REFERENCE_EXAMPLE, "backend_params": {**PARAMS, "file_size": "1M"}}, "file_size"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(NixlStoreAdapterConfig, data, field)


def test_readme_examples_validate_and_fields_are_documented() -> None:
    assert_readme_configures(NixlStoreAdapterConfig, README)


def test_registers_one_implemented_spec() -> None:
    [spec] = lmcache_l2_nixl_store.plugin.lmcache_register_l2_adapters()
    assert isinstance(spec, L2AdapterSpec)
    assert (spec.name, spec.config_model, spec.not_implemented) == (
        "nixl_store",
        NixlStoreAdapterConfig,
        None,
    )
