"""Tests of the lmcache-l2-aerospike plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_aerospike.config import AerospikeAdapterConfig, parse_hosts

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_pending_plugin,
    assert_readme_documents_fields,
    readme_adapter_examples,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"
# The example of the configuration reference, verbatim.
REFERENCE_EXAMPLE: dict[str, Any] = {
    "type": "aerospike",
    "hosts": "127.0.0.1:3000",
    "namespace": "lmcache",
    "set_name": "kv_chunks",
    "num_workers": 8,
}
MINIMAL: dict[str, Any] = {"type": "aerospike", "hosts": "127.0.0.1:3000"}


def test_registered_and_pending() -> None:
    spec = assert_pending_plugin(
        PluginKind.L2_ADAPTER, "aerospike", "lmcache-l2-aerospike", "Python package 'aerospike'"
    )
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is AerospikeAdapterConfig


def test_reference_example_validates() -> None:
    config = AerospikeAdapterConfig.model_validate(REFERENCE_EXAMPLE)
    assert (config.namespace, config.set_name, config.num_workers) == ("lmcache", "kv_chunks", 8)


def test_readme_examples_validate_and_fields_are_documented() -> None:
    for example in readme_adapter_examples(README):
        AerospikeAdapterConfig.model_validate(example)
    assert_readme_documents_fields(AerospikeAdapterConfig, README)
    assert "`set`" in README.read_text()


def test_defaults() -> None:
    config = AerospikeAdapterConfig.model_validate(MINIMAL)
    assert (config.namespace, config.set_name) == ("lmcache", "kv_chunks")
    assert (config.read_timeout_ms, config.write_timeout_ms) == (1000, 2000)
    assert config.default_ttl_seconds == 86400
    assert (config.target_segment_bytes, config.max_record_bytes) == (0, 0)
    assert (config.username, config.password, config.max_capacity_gb) == (None, None, 0)


def test_set_is_another_name_of_set_name() -> None:
    config = AerospikeAdapterConfig.model_validate({**MINIMAL, "set": "kv"})
    assert config.set_name == "kv"
    assert config.model_dump()["set_name"] == "kv"


def test_parse_hosts() -> None:
    assert parse_hosts("a:3000, b.example:3001") == [("a", 3000), ("b.example", 3001)]
    assert parse_hosts("[::1]:3000") == [("[::1]", 3000)]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**MINIMAL, "timeout_ms": 5}, "timeout_ms"),
        ({**MINIMAL, "set": "a", "set_name": "b"}, "set"),
        (without(MINIMAL, "hosts"), "hosts"),
        ({**MINIMAL, "hosts": "127.0.0.1"}, "hosts"),
        ({**MINIMAL, "hosts": ":3000"}, "hosts"),
        ({**MINIMAL, "hosts": "a:3000,b:99999"}, "hosts"),
        ({**MINIMAL, "hosts": "a:3000,"}, "hosts"),
        ({**MINIMAL, "namespace": ""}, "namespace"),
        ({**MINIMAL, "num_workers": 0}, "num_workers"),
        ({**MINIMAL, "read_timeout_ms": 0}, "read_timeout_ms"),
        ({**MINIMAL, "write_timeout_ms": -1}, "write_timeout_ms"),
        ({**MINIMAL, "default_ttl_seconds": -1}, "default_ttl_seconds"),
        ({**MINIMAL, "target_segment_bytes": -1}, "target_segment_bytes"),
        ({**MINIMAL, "max_record_bytes": -1}, "max_record_bytes"),
        ({**MINIMAL, "max_capacity_gb": -1}, "max_capacity_gb"),
        ({**MINIMAL, "username": "admin"}, "password"),
        ({**MINIMAL, "password": "secret"}, "username"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(AerospikeAdapterConfig, data, field)
