"""Plugins own their flags: composition of the flag layout, and what the CLI does with it.

The reference flags themselves (names, defaults, panels, env vars) are checked by
tests/test_config_flags.py and tests/test_cli_server_flags.py, unchanged since the
flags moved into their plugins.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from lmcache_obs_lookup_hash_log.settings import LookupHashLogSettings
from lmcache_obs_tracing.settings import TracingSettings
from pydantic import Field

import lmcache_core
from lmcache_core.config.layout import FlagLayout
from lmcache_core.config.loading import load_config
from lmcache_core.config.plugin_settings import PluginSettings
from lmcache_core.errors import ConfigError
from tests.helpers import REQUIRED_ARGS, REQUIRED_VALUES, clear_lmcache_env, invoke, run_subprocess

MOVED_FIELDS = (
    "otlp_endpoint",
    "prometheus_port",
    "metrics_sample_rate",
    "lookup_hash_log_dir",
    "lookup_hash_log_rotation_interval",
    "lookup_hash_log_rotation_max_size",
    "lookup_hash_log_max_files",
    "worker_reap_timeout_seconds",
    "worker_registration_grace_seconds",
)
"""Flags that one plugin alone reads: declared by that plugin, never named by the core."""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_lmcache_env(monkeypatch)


class JoinsMP(PluginSettings):
    group: ClassVar[str] = "mp"
    after: ClassVar[str] = "port"

    joined_flag: int = Field(default=1, ge=1, description="A flag joining MP Server.")


class OwnGroup(PluginSettings):
    group: ClassVar[str] = "own_group"
    after: ClassVar[str] = "http"
    panel: ClassVar[str] = "Own Group"

    own_flag: str = Field(default="x", description="A flag of its own group.")


class AfterJoined(PluginSettings):
    group: ClassVar[str] = "mp"
    after: ClassVar[str] = "joined_flag"  # another plugin's flag: waits for it

    after_joined: bool = Field(default=False, description="Follows --joined-flag.")


class MissingAnchor(PluginSettings):
    group: ClassVar[str] = "observability"
    after: ClassVar[str] = "not_installed_flag"

    orphan_flag: int = Field(default=0, description="Its anchor's plugin is absent.")


def _keys(layout: FlagLayout, group: str) -> list[str]:
    [found] = [g for g in layout.groups if g.key == group]
    return [f.name for f in found.fields]


def test_settings_join_a_group_after_their_anchor_in_any_load_order() -> None:
    for models in ((AfterJoined, JoinsMP), (JoinsMP, AfterJoined)):
        mp = _keys(FlagLayout.compose(models), "mp")
        assert mp[mp.index("port") + 1 : mp.index("port") + 3] == ["joined_flag", "after_joined"]


def test_settings_of_their_own_form_a_group_after_theirs() -> None:
    layout = FlagLayout.compose([OwnGroup])
    keys = [g.key for g in layout.groups]
    assert keys[keys.index("http") + 1] == "own_group"
    assert layout.groups[keys.index("own_group")].panel == "Own Group"


def test_a_missing_anchor_puts_the_flags_last() -> None:
    assert _keys(FlagLayout.compose([MissingAnchor]), "observability")[-1] == "orphan_flag"


def test_two_models_declaring_one_flag_are_refused() -> None:
    class Clash(PluginSettings):
        group: ClassVar[str] = "mp"
        port: int = 1

    with pytest.raises(ConfigError, match="--port: declared by both"):
        FlagLayout.compose([Clash])


def test_a_model_without_a_group_is_refused() -> None:
    class Nowhere(PluginSettings):
        some_flag: int = 1

    with pytest.raises(ConfigError, match="names no group"):
        FlagLayout.compose([Nowhere])


def test_plugin_settings_are_validated_typed_and_in_the_dry_run_document() -> None:
    config = load_config({**REQUIRED_VALUES, "joined_flag": "3"}, plugins=(JoinsMP, OwnGroup))
    settings = config.plugin_settings(JoinsMP)
    assert settings.joined_flag == 3
    document = config.public_dict()
    assert document["mp"]["joined_flag"] == 3
    assert document["own_group"] == {"own_flag": "x"}
    with pytest.raises(ConfigError, match="--joined-flag"):
        load_config({**REQUIRED_VALUES, "joined_flag": "0"}, plugins=(JoinsMP,))


def test_plugin_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_OWN_FLAG", "from-env")
    config = load_config(REQUIRED_VALUES, plugins=(OwnGroup,))
    assert config.plugin_settings(OwnGroup).own_flag == "from-env"


def test_without_its_plugin_a_flag_does_not_exist() -> None:
    config = load_config(REQUIRED_VALUES, plugins=())
    with pytest.raises(LookupError, match="TracingSettings"):
        config.plugin_settings(TracingSettings)
    assert "otlp_endpoint" not in config.public_dict()["observability"]
    with pytest.raises(ConfigError, match="--otlp-endpoint: no such flag"):
        load_config({**REQUIRED_VALUES, "otlp_endpoint": "http://c:4317"}, plugins=())
    # --enable-tracing alone is valid when no tracing plugin asks for an endpoint
    load_config({**REQUIRED_VALUES, "enable_tracing": True}, plugins=())


def test_plugin_advisories_join_the_core_ones() -> None:
    config = load_config(
        {**REQUIRED_VALUES, "lookup_hash_log_dir": "/tmp/h", "disable_observability": True},
        plugins=(LookupHashLogSettings, TracingSettings),
    )
    assert any("lookup-hash log is off too" in note for note in config.advisories())
    config = load_config(
        {**REQUIRED_VALUES, "otlp_endpoint": "http://c:4317"}, plugins=(TracingSettings,)
    )
    assert config.advisories() == [
        "--otlp-endpoint is set but tracing is off (add --enable-tracing)"
    ]


def test_a_disabled_plugins_flags_are_gone(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(
        capsys, "server", *REQUIRED_ARGS, "--disable-plugin", "obs_tracing", "--dry-run"
    )
    assert result.code == 0, result.err
    document = result.json()
    assert "otlp_endpoint" not in document["config"]["observability"]
    assert "prometheus_port" in document["config"]["observability"]
    assert "tracing" not in {s["name"] for s in document["plugins"]["subscribers"]}
    result = invoke(
        capsys,
        "server",
        *REQUIRED_ARGS,
        "--disable-plugin=lmcache-obs-tracing",
        "--otlp-endpoint",
        "http://c:4317",
        "--dry-run",
    )
    line = result.assert_usage_error("--otlp-endpoint", "disabled plugins", "obs_tracing")
    assert "Traceback" not in line


def test_help_imports_only_the_plugins_settings() -> None:
    script = (
        "import json, sys\n"
        "from lmcache_core.cli.main import main\n"
        "main(['server', '--help'])\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert "lmcache_obs_tracing.settings" in loaded
    heavy = {
        "torch",
        "opentelemetry.sdk",
        "grpc",
        "prometheus_client",
        "lmcache_engine_default.engine",
        "lmcache_obs_tracing.provider",
        "lmcache_obs_metrics.subscriber",
    }
    assert loaded & heavy == set()


def test_the_core_names_no_moved_field() -> None:
    core = Path(lmcache_core.__file__).parent
    offenders = [
        f"{path.relative_to(core)}: {name}"
        for path in sorted(core.rglob("*.py"))
        for name in MOVED_FIELDS
        if re.search(rf"\b{name}\b", path.read_text())
    ]
    assert offenders == []


def test_a_moved_flag_in_a_real_process_keeps_its_env_and_error() -> None:
    result = run_subprocess(
        "server", *REQUIRED_ARGS, "--dry-run", env={"LMCACHE_WORKER_REAP_TIMEOUT_SECONDS": "0"}
    )
    assert result.code == 0, result.err
    assert result.config()["mp"]["worker_reap_timeout_seconds"] == 0
