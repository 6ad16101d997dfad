"""Tests of the lmcache-l2-aerospike plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmcache_l2_aerospike.plugin
from lmcache_l2_aerospike.config import AerospikeAdapterConfig, parse_hosts

from lmcache_core.testing.plugin_checks import without
from lmcache_core.testing.unavailable_adapter import UnavailableAdapterChecks

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


def test_reference_example_validates() -> None:
    config = AerospikeAdapterConfig.model_validate(REFERENCE_EXAMPLE)
    assert (config.namespace, config.set_name, config.num_workers) == ("lmcache", "kv_chunks", 8)


def test_readme_documents_the_set_alias() -> None:
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


class TestAerospikeUnavailable(UnavailableAdapterChecks):
    adapter = "aerospike"
    distribution = "lmcache-l2-aerospike"
    plugin = lmcache_l2_aerospike.plugin
    dependency = lmcache_l2_aerospike.plugin.DEPENDENCY
    reason_fragment = "Python package 'aerospike'"
    config_model = AerospikeAdapterConfig
    readme = README
    valid_config = MINIMAL
    invalid_configs = [
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
    ]


def test_the_refusal_says_why_there_is_no_binding() -> None:
    [spec] = lmcache_l2_aerospike.plugin.lmcache_register_l2_adapters()
    reason = spec.not_implemented or ""
    assert "\n" not in reason
    assert reason.endswith(
        "no Aerospike server can run where this project is tested, so no binding ships "
        "(see the lmcache-l2-aerospike README); use resp or s3 for a shared L2"
    ), reason


def test_readme_quotes_the_refusal_line_and_claims_no_data_path() -> None:
    [spec] = lmcache_l2_aerospike.plugin.lmcache_register_l2_adapters()
    text = README.read_text()
    if spec.not_implemented and "which is not installed" in spec.not_implemented:
        prefix = "error: --l2-adapter #1: l2_adapter 'aerospike' is not implemented yet: "
        line = prefix + spec.not_implemented
        assert line in text.splitlines()
    assert "it stores nothing" in text
    assert "## What is missing, and why" in text
