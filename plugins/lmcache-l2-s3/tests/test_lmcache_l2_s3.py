"""Tests of the lmcache-l2-s3 plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_s3.config import S3AdapterConfig

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_readme_configures,
    assert_registered_plugin,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"
MINIMAL: dict[str, Any] = {
    "type": "s3",
    "s3_endpoint": "s3://bucket.s3.us-east-1.amazonaws.com",
    "s3_region": "us-east-1",
}
KEYS = {"aws_access_key_id": "AKIA1234", "aws_secret_access_key": "very-secret"}


def test_registered_and_implemented() -> None:
    spec = assert_registered_plugin(PluginKind.L2_ADAPTER, "s3", "lmcache-l2-s3")
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is S3AdapterConfig


def test_readme_examples_validate_and_fields_are_documented() -> None:
    assert_readme_configures(S3AdapterConfig, README)


def test_defaults() -> None:
    config = S3AdapterConfig.model_validate(MINIMAL)
    assert config.s3_num_io_threads == 64
    assert config.s3_prefer_http2 is True
    assert config.s3_enable_s3express is False
    assert config.disable_tls is False
    assert config.aws_access_key_id is None
    assert config.aws_secret_access_key is None
    assert config.max_capacity_gb == 0
    assert config.s3_addressing_style == "auto"


@pytest.mark.parametrize("style", ["virtual", "path", "auto"])
def test_addressing_styles(style: str) -> None:
    config = S3AdapterConfig.model_validate({**MINIMAL, "s3_addressing_style": style})
    assert config.s3_addressing_style == style


@pytest.mark.parametrize("endpoint", ["s3://bucket.example.com", "bucket.example.com:9000"])
def test_endpoint_forms(endpoint: str) -> None:
    assert (
        S3AdapterConfig.model_validate({**MINIMAL, "s3_endpoint": endpoint}).s3_endpoint == endpoint
    )


def test_secret_key_is_not_shown() -> None:
    config = S3AdapterConfig.model_validate({**MINIMAL, **KEYS})
    assert "very-secret" not in repr(config)
    assert "very-secret" not in str(config.model_dump(mode="json"))
    assert config.aws_secret_access_key is not None
    assert config.aws_secret_access_key.get_secret_value() == "very-secret"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**MINIMAL, "s3_bucket": "b"}, "s3_bucket"),
        (without(MINIMAL, "s3_endpoint"), "s3_endpoint"),
        (without(MINIMAL, "s3_region"), "s3_region"),
        ({**MINIMAL, "s3_endpoint": "https://bucket.example.com"}, "s3_endpoint"),
        ({**MINIMAL, "s3_endpoint": "s3://"}, "s3_endpoint"),
        ({**MINIMAL, "s3_endpoint": "bucket"}, "s3_endpoint"),
        ({**MINIMAL, "s3_endpoint": "bucket."}, "s3_endpoint"),
        ({**MINIMAL, "s3_endpoint": "b.host/prefix"}, "s3_endpoint"),
        ({**MINIMAL, "s3_addressing_style": "dns"}, "s3_addressing_style"),
        ({**MINIMAL, "s3_num_io_threads": 0}, "s3_num_io_threads"),
        ({**MINIMAL, "max_capacity_gb": -1}, "max_capacity_gb"),
        ({**MINIMAL, "aws_access_key_id": "AKIA1234"}, "aws_secret_access_key"),
        ({**MINIMAL, "aws_secret_access_key": "x"}, "aws_access_key_id"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(S3AdapterConfig, data, field)
