"""Tests of the lmcache-l2-nixl-store plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_nixl_store.config import NixlStoreAdapterConfig

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_pending_plugin,
    assert_readme_documents_fields,
    readme_adapter_examples,
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


def test_registered_and_pending() -> None:
    spec = assert_pending_plugin(
        PluginKind.L2_ADAPTER, "nixl_store", "lmcache-l2-nixl-store", "Python package 'nixl'"
    )
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is NixlStoreAdapterConfig


def test_reference_example_validates() -> None:
    config = NixlStoreAdapterConfig.model_validate(REFERENCE_EXAMPLE)
    assert (config.backend, config.pool_size) == ("POSIX", 64)
    assert config.backend_params["file_path"] == "/data/lmcache/l2"


def test_readme_examples_validate_and_fields_are_documented() -> None:
    for example in readme_adapter_examples(README):
        NixlStoreAdapterConfig.model_validate(example)
    assert_readme_documents_fields(NixlStoreAdapterConfig, README)


@pytest.mark.parametrize("backend", ["GDS", "GDS_MT", "POSIX", "HF3FS", "OBJ"])
def test_every_backend(backend: str) -> None:
    data = {**without(REFERENCE_EXAMPLE, "backend_params"), "backend": backend}
    assert NixlStoreAdapterConfig.model_validate(data).backend_params == {}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**REFERENCE_EXAMPLE, "pool": 64}, "pool"),
        (without(REFERENCE_EXAMPLE, "backend"), "backend"),
        (without(REFERENCE_EXAMPLE, "pool_size"), "pool_size"),
        ({**REFERENCE_EXAMPLE, "backend": "posix_fs"}, "backend"),
        ({**REFERENCE_EXAMPLE, "pool_size": 0}, "pool_size"),
        ({**REFERENCE_EXAMPLE, "backend_params": {"use_direct_io": False}}, "backend_params"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(NixlStoreAdapterConfig, data, field)
