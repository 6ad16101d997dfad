"""The typed plugin contract: the kind table, names, hook options, disables, builders."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest

from lmcache_core.errors import PluginLoadError, PluginNotImplementedError
from lmcache_core.plugin import EvictionPolicySpec, hookspecs
from lmcache_core.plugin.kinds import KINDS
from lmcache_core.plugin.registry import PluginRegistry, PluginStatus
from lmcache_core.plugin.specs import PluginKind, PluginSpec, pending_factory
from lmcache_core.storage.eviction import EvictionSettings
from lmcache_core.storage.l2.context import (
    DEFAULT_PERIODIC_NOTIFIER_INTERVAL_MS,
    L2AdapterContext,
)
from tests.fake_dists import FakeSite, eviction_plugin

REPO = Path(__file__).resolve().parents[2]
SETTINGS = EvictionSettings(0.8, 0.2, 1 << 20)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSite:
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("LMCACHE_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("LMCACHE_PLUGINS_STRICT", raising=False)
    return FakeSite(tmp_path / "site")


def test_the_kind_table_covers_every_kind_and_hook() -> None:
    assert list(KINDS) == list(PluginKind)
    hooks = {name for name in dir(hookspecs) if name.startswith("lmcache_register_")}
    assert {info.hook for info in KINDS.values()} == hooks
    for kind, info in KINDS.items():
        assert info.spec_type.kind is kind
        assert "factory" in {f.name for f in fields(info.spec_type)}


@pytest.mark.parametrize("name", ["LRU", "IsolatedLRU", "skip_l1", "blend-legacy", "s3"])
def test_the_reference_spellings_are_valid_names(name: str) -> None:
    EvictionPolicySpec(name=name, factory=lambda settings: None)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("name", ["", " lru", "lru ", "my policy", "a.b", "1st", "lru\n"])
def test_names_configuration_could_not_spell_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="is not valid"):
        EvictionPolicySpec(name=name, factory=lambda settings: None)  # type: ignore[arg-type,return-value]


def test_aliases_follow_the_same_rule() -> None:
    with pytest.raises(ValueError, match="'two words'"):
        EvictionPolicySpec(
            name="ok",
            factory=lambda settings: None,  # type: ignore[arg-type,return-value]
            aliases=("two words",),
        )


@pytest.mark.parametrize("option", ["tryfirst", "trylast", "wrapper", "hookwrapper"])
def test_hookimpl_options_are_rejected_at_load(site: FakeSite, option: str) -> None:
    body = "yield" if option in ("wrapper", "hookwrapper") else "return []"
    site.add(
        "fake-ordered",
        f"""
        from lmcache_core.plugin import hookimpl

        @hookimpl({option}=True)
        def lmcache_register_eviction_policies():
            {body}
        """,
    )
    with pytest.raises(PluginLoadError, match=f"@hookimpl\\({option}=True\\).*plain @hookimpl"):
        PluginRegistry(strict=True, entry_points=site.entry_points())
    lenient = PluginRegistry(strict=False, entry_points=site.entry_points())
    assert [r.status for r in lenient.records] == [PluginStatus.BROKEN]


def test_disabling_a_name_that_matches_nothing_warns(
    site: FakeSite, caplog: pytest.LogCaptureFixture
) -> None:
    site.add("fake-fifo", eviction_plugin("FancyFIFO"), ep_name="fancy")
    with caplog.at_level(logging.WARNING, logger="lmcache.plugins"):
        PluginRegistry(strict=True, disabled=["nosuch"], entry_points=site.entry_points())
    assert "disabled plugin 'nosuch' matched no entry point or distribution" in caplog.text
    assert "installed: fancy" in caplog.text


def test_disabling_a_spec_name_names_the_entry_point_to_disable(
    site: FakeSite, caplog: pytest.LogCaptureFixture
) -> None:
    site.add("fake-fifo", eviction_plugin("FancyFIFO"), ep_name="fancy")
    with caplog.at_level(logging.WARNING, logger="lmcache.plugins"):
        registry = PluginRegistry(
            strict=True, disabled=["FancyFIFO"], entry_points=site.entry_points()
        )
    assert [r.status for r in registry.records] == [PluginStatus.OK]  # nothing was disabled
    assert "'FancyFIFO' matched no entry point" in caplog.text
    assert "it is the name of a spec" in caplog.text
    assert "'fancy' (distribution fake-fifo)" in caplog.text


def test_disabling_by_entry_point_or_distribution_does_not_warn(
    site: FakeSite, caplog: pytest.LogCaptureFixture
) -> None:
    site.add("fake-fifo", eviction_plugin("FancyFIFO"), ep_name="fancy")
    with caplog.at_level(logging.WARNING, logger="lmcache.plugins"):
        PluginRegistry(
            strict=True, disabled=["fancy", "fake_fifo"], entry_points=site.entry_points()
        )
    assert "matched no entry point" not in caplog.text


def test_the_environment_variable_warns_too(
    site: FakeSite, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.add("fake-fifo", eviction_plugin("FancyFIFO"), ep_name="fancy")
    monkeypatch.setenv("LMCACHE_DISABLE_PLUGINS", "Fancy-FIFO")
    with caplog.at_level(logging.WARNING, logger="lmcache.plugins"):
        PluginRegistry(strict=True, entry_points=site.entry_points())
    assert "'Fancy-FIFO' matched no entry point" in caplog.text


def test_builders_build_the_resolved_spec_without_a_second_lookup(site: FakeSite) -> None:
    site.add("fake-fifo", eviction_plugin("FancyFIFO"))
    registry = PluginRegistry(strict=True, entry_points=site.entry_points())
    spec = registry.resolve(PluginKind.EVICTION_POLICY, "fancy_fifo")
    assert isinstance(spec, EvictionPolicySpec)
    registry._providers[PluginKind.EVICTION_POLICY].clear()  # the name no longer resolves
    assert registry.builder.eviction_policy(spec, SETTINGS) == {"policy": "FancyFIFO"}


def test_builders_refuse_a_pending_spec_naming_its_distribution(site: FakeSite) -> None:
    site.add(
        "fake-later",
        """
        from lmcache_core.plugin import EvictionPolicySpec, hookimpl, pending_factory

        @hookimpl
        def lmcache_register_eviction_policies():
            return [EvictionPolicySpec(name="later", not_implemented="not yet",
                                       factory=pending_factory("eviction policy 'later'", "x"))]
        """,
        version="2.0.0",
    )
    registry = PluginRegistry(strict=True, entry_points=site.entry_points())
    spec = registry.resolve(PluginKind.EVICTION_POLICY, "later")
    assert isinstance(spec, EvictionPolicySpec)
    with pytest.raises(PluginNotImplementedError, match=r"'later' \(fake-later 2.0.0\).*not yet"):
        registry.builder.eviction_policy(spec, SETTINGS)
    unregistered = EvictionPolicySpec(
        name="loose", factory=pending_factory("x", "y"), not_implemented="later"
    )
    with pytest.raises(PluginNotImplementedError, match="'loose' is not implemented yet"):
        registry.builder.eviction_policy(unregistered, SETTINGS)


def test_the_adapter_context_default_matches_the_server_flag() -> None:
    from lmcache_core.config.l2 import L2PolicyConfig

    field = L2PolicyConfig.model_fields["periodic_notifier_interval_ms"]
    assert field.default == DEFAULT_PERIODIC_NOTIFIER_INTERVAL_MS
    with pytest.raises(ValueError, match="index"):
        L2AdapterContext(index=0)
    with pytest.raises(ValueError, match="periodic_notifier_interval_ms"):
        L2AdapterContext(periodic_notifier_interval_ms=0)


def test_the_spec_base_keeps_an_untyped_factory() -> None:
    # Generic code (the name-based registry.build) calls any spec's factory.
    assert {f.name for f in fields(PluginSpec)} >= {"name", "factory", "not_implemented"}


@pytest.mark.slow
def test_mypy_rejects_a_plugin_whose_factory_disagrees(tmp_path: Path) -> None:
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(
        textwrap.dedent(
            """
            from __future__ import annotations

            from lmcache_core.config.l2_adapter import L2AdapterConfigBase
            from lmcache_core.plugin import EvictionPolicySpec, L2AdapterSpec
            from lmcache_core.storage.l2.adapter import L2AdapterV1
            from lmcache_core.storage.l2.context import L2AdapterContext


            class MineConfig(L2AdapterConfigBase):
                path: str = ""


            class OtherConfig(L2AdapterConfigBase):
                url: str = ""


            def wrong_policy(capacity: int) -> object:
                return object()


            def adapter_of_other(config: OtherConfig, context: L2AdapterContext) -> L2AdapterV1:
                raise NotImplementedError


            POLICY = EvictionPolicySpec(name="bad", factory=wrong_policy)
            ADAPTER = L2AdapterSpec[MineConfig](
                name="bad", factory=adapter_of_other, config_model=MineConfig
            )
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(plugin)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 1, result.stdout
    assert 'Argument "factory" to "EvictionPolicySpec"' in result.stdout
    assert 'Argument "factory" to "L2AdapterSpec"' in result.stdout
