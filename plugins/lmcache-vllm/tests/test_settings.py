"""The ``lmcache.mp.*`` options: upstream's keys and defaults, refusals, warnings."""

from __future__ import annotations

import logging

import pytest
from lmcache_vllm.settings import ConnectorSettings, SettingsError, TransferMode


def test_defaults_are_upstreams() -> None:
    settings = ConnectorSettings.from_extra_config({}, env={})
    assert settings.server_url == "tcp://localhost:5555"
    assert settings.mq_timeout == 300.0
    assert settings.heartbeat_interval == 10.0
    assert settings.transfer_mode is TransferMode.AUTO
    assert settings.save_decode_cache is False
    assert settings.eager_prefetch is False


def test_host_port_and_server_urls() -> None:
    parse = ConnectorSettings.from_extra_config
    assert parse({"lmcache.mp.host": "10.0.0.1", "lmcache.mp.port": "6000"}, env={}).server_url == (
        "tcp://10.0.0.1:6000"
    )
    assert parse({"lmcache.mp.host": "ipc:///tmp/x"}, env={}).server_url == "ipc:///tmp/x:5555"
    urls = {"lmcache.mp.server_urls": "h:7000", "lmcache.mp.port": 1}
    assert parse(urls, env={}).server_url == "tcp://h:7000"
    with pytest.raises(SettingsError, match="exactly one"):
        parse({"lmcache.mp.server_urls": ["a:1", "b:2"]}, env={})
    with pytest.raises(SettingsError, match="port"):
        parse({"lmcache.mp.port": 70000}, env={})
    with pytest.raises(SettingsError, match="port"):
        parse({"lmcache.mp.port": "http"}, env={})


def test_transfer_mode_key_overrides_the_environment() -> None:
    env = {"LMCACHE_MP_TRANSFER_MODE": "lmcache_driven"}
    parse = ConnectorSettings.from_extra_config
    assert parse({}, env=env).transfer_mode is TransferMode.LMCACHE_DRIVEN
    key = {"lmcache.mp.mp_transfer_mode": "engine_driven"}
    assert parse(key, env=env).transfer_mode is TransferMode.ENGINE_DRIVEN
    with pytest.raises(SettingsError, match="mp_transfer_mode"):
        parse({"lmcache.mp.mp_transfer_mode": "fast"}, env={})


def test_bad_values_name_the_key() -> None:
    parse = ConnectorSettings.from_extra_config
    with pytest.raises(SettingsError, match="mq_timeout"):
        parse({"lmcache.mp.mq_timeout": 0}, env={})
    with pytest.raises(SettingsError, match="heartbeat_interval"):
        parse({"lmcache.mp.heartbeat_interval": "soon"}, env={})
    with pytest.raises(SettingsError, match="save_decode_cache"):
        parse({"lmcache.mp.save_decode_cache": "maybe"}, env={})
    assert parse({"lmcache.mp.save_decode_cache": "true"}, env={}).save_decode_cache is True


def test_unimplemented_options_are_refused_not_ignored() -> None:
    parse = ConnectorSettings.from_extra_config
    with pytest.raises(SettingsError, match="lazy_offload"):
        parse({"lmcache.mp.lazy_offload": True}, env={})
    assert parse({"lmcache.mp.lazy_offload": False}, env={}).server_url


def test_unknown_keys_are_warned_about_by_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lmcache_vllm.settings"):
        ConnectorSettings.from_extra_config(
            {"lmcache.mp.hearbeat_interval": 1, "other.key": 1}, env={}
        )
    assert "lmcache.mp.hearbeat_interval" in caplog.text
    assert "other.key" not in caplog.text
