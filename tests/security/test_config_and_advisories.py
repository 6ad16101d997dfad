"""``--api-key-file`` through the config models; the start-up warning about an open admin API."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmcache_core.config.loading import load_config
from lmcache_core.errors import StartupError
from lmcache_core.server.runner import build_api_keys
from tests.helpers import REQUIRED_VALUES, clear_lmcache_env, dry_run

SECURITY = "SECURITY: the admin HTTP API listens on"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_lmcache_env(monkeypatch)


def security_warnings(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    warnings = dry_run(capsys, *args)["startup"]["warnings"]
    return [warning for warning in warnings if warning.startswith(SECURITY)]


def test_flag_alias_and_repeats(capsys: pytest.CaptureFixture[str]) -> None:
    config = dry_run(capsys, "--api-key-file", "/a b/k1", "--http-api-key-file", "/k2")["config"]
    assert config["mp"]["api_key_file"] == ["/a b/k1", "/k2"]  # a path, not a secret: shown


def test_env_names_one_file_even_with_spaces(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMCACHE_API_KEY_FILE", "/keys/my key")
    assert dry_run(capsys)["config"]["mp"]["api_key_file"] == ["/keys/my key"]


def test_open_admin_api_warns_once(capsys: pytest.CaptureFixture[str]) -> None:
    warnings = security_warnings(capsys)  # the default --http-host is 0.0.0.0
    assert len(warnings) == 1
    assert "0.0.0.0:8080" in warnings[0] and "--api-key-file" in warnings[0]


@pytest.mark.parametrize(
    "args",
    [
        ("--http-host", "127.0.0.1"),
        ("--http-host", "localhost"),
        ("--http-host", "::1"),
        ("--api-key-file", "/k"),
        ("--http-admin-token", "a-token-of-16-chars-or-more"),
    ],
    ids=["loopback-v4", "localhost", "loopback-v6", "key-file", "admin-token"],
)
def test_no_warning_when_protected_or_local(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    assert security_warnings(capsys, *args) == []


def test_no_warning_with_an_env_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMCACHE_API_KEY", "some-key")
    assert security_warnings(capsys) == []


def test_an_unusable_key_file_stops_start_up(tmp_path: Path) -> None:
    config = load_config({**REQUIRED_VALUES, "api_key_file": [str(tmp_path / "absent")]})
    with pytest.raises(StartupError, match=r"--api-key-file: API key file .*absent"):
        build_api_keys(config)
    (tmp_path / "k").write_text("ok-key")
    config = load_config({**REQUIRED_VALUES, "api_key_file": [str(tmp_path / "k")]})
    assert build_api_keys(config).key_count == 1


def test_a_reachable_zmq_server_without_keys_warns(capsys: pytest.CaptureFixture[str]) -> None:
    local = ("--http-host", "127.0.0.1")
    warnings = dry_run(capsys, *local, "--host", "0.0.0.0")["startup"]["warnings"]
    assert [w for w in warnings if w.startswith("SECURITY: the ZeroMQ")] != []
    assert security_warnings(capsys, *local, "--host", "0.0.0.0") == []  # the HTTP one is not
    warnings = dry_run(capsys, *local, "--host", "0.0.0.0", "--api-key-file", "/k")["startup"]
    assert not any(w.startswith("SECURITY") for w in warnings["warnings"])
    assert not any(w.startswith("SECURITY") for w in dry_run(capsys, *local)["startup"]["warnings"])
