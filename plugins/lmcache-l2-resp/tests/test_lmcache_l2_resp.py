"""Tests of the lmcache-l2-resp plugin distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_resp.config import ENV_FALLBACKS, RespAdapterConfig

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_readme_configures,
    assert_registered_plugin,
    without,
)

README = Path(__file__).resolve().parents[1] / "README.md"
MINIMAL: dict[str, Any] = {"type": "resp", "host": "127.0.0.1", "port": 6379}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ENV_FALLBACKS.values():
        monkeypatch.delenv(variable, raising=False)


def test_registered_and_implemented() -> None:
    spec = assert_registered_plugin(PluginKind.L2_ADAPTER, "resp", "lmcache-l2-resp")
    assert isinstance(spec, L2AdapterSpec)
    assert spec.config_model is RespAdapterConfig


def test_readme_examples_validate_and_fields_are_documented() -> None:
    assert_readme_configures(RespAdapterConfig, README)


def test_defaults() -> None:
    config = RespAdapterConfig.model_validate(MINIMAL)
    assert config.num_workers == 8
    assert config.username is None
    assert config.password is None
    assert config.max_capacity_gb == 0


def test_environment_fills_absent_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_RESP_HOST", "redis.internal")
    monkeypatch.setenv("LMCACHE_RESP_PORT", "6380")
    monkeypatch.setenv("LMCACHE_RESP_USERNAME", "lmcache")
    monkeypatch.setenv("LMCACHE_RESP_PASSWORD", "from-env")
    config = RespAdapterConfig.model_validate({"type": "resp"})
    assert (config.host, config.port, config.username) == ("redis.internal", 6380, "lmcache")
    assert config.password is not None
    assert config.password.get_secret_value() == "from-env"
    assert "from-env" not in repr(config)


def test_json_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_RESP_HOST", "redis.internal")
    monkeypatch.setenv("LMCACHE_RESP_PORT", "6380")
    config = RespAdapterConfig.model_validate(MINIMAL)
    assert (config.host, config.port) == ("127.0.0.1", 6379)


def test_bad_port_from_environment_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_RESP_PORT", "70000")
    assert_config_rejects(RespAdapterConfig, without(MINIMAL, "port"), "port")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**MINIMAL, "db": 0}, "db"),
        (without(MINIMAL, "host"), "host"),
        (without(MINIMAL, "port"), "port"),
        ({**MINIMAL, "port": 0}, "port"),
        ({**MINIMAL, "port": 65536}, "port"),
        ({**MINIMAL, "num_workers": 0}, "num_workers"),
        ({**MINIMAL, "max_capacity_gb": -2}, "max_capacity_gb"),
        ({**MINIMAL, "username": "lmcache"}, "password"),
    ],
)
def test_rejects(data: dict[str, Any], field: str) -> None:
    assert_config_rejects(RespAdapterConfig, data, field)
