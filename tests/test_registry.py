"""The plugin registry against fake installed distributions."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmcache_core.errors import (
    DuplicatePluginError,
    PluginLoadError,
    PluginNotImplementedError,
    UnknownPluginError,
)
from lmcache_core.plugin.registry import PluginRegistry, PluginStatus
from lmcache_core.plugin.specs import PluginKind
from tests.fake_dists import FakeSite, eviction_plugin

BROKEN_AT_IMPORT = "raise ImportError('needs libfoo.so')\n"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSite:
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("LMCACHE_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("LMCACHE_PLUGINS_STRICT", raising=False)
    return FakeSite(tmp_path / "site")


def load(site: FakeSite, **kwargs: object) -> PluginRegistry:
    return PluginRegistry(entry_points=site.entry_points(), **kwargs)  # type: ignore[arg-type]


def test_healthy_plugin_resolves_by_any_spelling(site: FakeSite) -> None:
    site.add("fake-fifo", eviction_plugin("FancyFIFO", aliases=("ff",)), version="1.2.3")
    registry = load(site, strict=True)
    for spelling in ("FancyFIFO", "fancy_fifo", "FANCY-FIFO", "ff"):
        spec = registry.resolve(PluginKind.EVICTION_POLICY, spelling)
        assert spec.name == "FancyFIFO"
    record = registry.owner(spec)
    assert (record.distribution, record.version) == ("fake-fifo", "1.2.3")
    assert registry.build(PluginKind.EVICTION_POLICY, "fancy_fifo") == {"policy": "FancyFIFO"}
    [row] = registry.rows()
    assert (row.name, row.kind, row.distribution, row.version, row.status) == (
        "FancyFIFO",
        "eviction_policy",
        "fake-fifo",
        "1.2.3",
        "ok",
    )


def test_unknown_name_lists_installed(site: FakeSite) -> None:
    site.add("fake-a", eviction_plugin("alpha"))
    site.add("fake-b", eviction_plugin("beta"))
    registry = load(site, strict=True)
    with pytest.raises(
        UnknownPluginError, match=r"unknown eviction policy 'gamma'; installed: alpha, beta"
    ):
        registry.resolve(PluginKind.EVICTION_POLICY, "gamma")


def test_broken_plugin_is_skipped_with_a_warning(
    site: FakeSite, caplog: pytest.LogCaptureFixture
) -> None:
    site.add("fake-good", eviction_plugin("good"))
    site.add("fake-broken", BROKEN_AT_IMPORT)
    with caplog.at_level(logging.WARNING, logger="lmcache.plugins"):
        registry = load(site, strict=False)
    assert registry.resolve(PluginKind.EVICTION_POLICY, "good").name == "good"
    [broken] = registry.broken()
    assert broken.distribution == "fake-broken"
    assert "ImportError: needs libfoo.so" in (broken.error or "")
    assert "fake-broken" in caplog.text and "needs libfoo.so" in caplog.text
    rows = {row.distribution: row for row in registry.rows()}
    assert rows["fake-broken"].status == "broken"


def test_selecting_a_name_only_a_broken_plugin_could_provide_fails(site: FakeSite) -> None:
    site.add("fake-good", eviction_plugin("good"))
    site.add("fake-broken", BROKEN_AT_IMPORT)
    registry = load(site, strict=False)
    with pytest.raises(UnknownPluginError) as info:
        registry.resolve(PluginKind.EVICTION_POLICY, "wanted")
    message = str(info.value)
    assert "installed: good" in message
    assert (
        "broken plugins that may provide it: fake-broken 1.0.0 (ImportError: needs libfoo.so)"
        in message
    )


def test_strict_mode_reraises_load_errors(site: FakeSite) -> None:
    site.add("fake-broken", BROKEN_AT_IMPORT)
    with pytest.raises(PluginLoadError, match=r"fake-broken 1\.0\.0 failed to load: ImportError"):
        load(site, strict=True)


def test_strict_mode_follows_the_environment(
    site: FakeSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.add("fake-broken", BROKEN_AT_IMPORT)
    monkeypatch.setenv("LMCACHE_PLUGINS_STRICT", "1")
    with pytest.raises(PluginLoadError):
        load(site)
    monkeypatch.setenv("LMCACHE_PLUGINS_STRICT", "0")
    assert load(site).broken()


@pytest.mark.parametrize(
    "source, error",
    [
        (
            "from lmcache_core.plugin import hookimpl\n"
            "@hookimpl\ndef lmcache_register_eviction_policies():\n    return 'LRU'\n",
            "returned str, not a list of specs",
        ),
        (
            "from lmcache_core.plugin import hookimpl, EngineSpec\n"
            "@hookimpl\ndef lmcache_register_eviction_policies():\n"
            "    return [EngineSpec(name='x', factory=dict)]\n",
            "returned EngineSpec, expected EvictionPolicySpec",
        ),
        (
            "from lmcache_core.plugin import hookimpl\n"
            "@hookimpl\ndef lmcache_register_widgets():\n    return []\n",
            "lmcache_register_widgets",
        ),
        (
            "from lmcache_core.plugin import hookimpl\n"
            "@hookimpl\ndef lmcache_register_engines():\n    raise RuntimeError('boom')\n",
            "RuntimeError: boom",
        ),
    ],
    ids=["not-a-list", "wrong-kind", "unknown-hook", "hook-raises"],
)
def test_misbehaving_hooks_mark_the_plugin_broken(site: FakeSite, source: str, error: str) -> None:
    site.add("fake-bad", source)
    registry = load(site, strict=False)
    [broken] = registry.broken()
    assert error in (broken.error or "")
    assert registry.specs(PluginKind.ENGINE) == []
    assert registry.specs(PluginKind.EVICTION_POLICY) == []


def test_a_failing_hook_drops_every_spec_of_its_plugin(site: FakeSite) -> None:
    site.add(
        "fake-half",
        """
        from lmcache_core.plugin import EvictionPolicySpec, hookimpl

        @hookimpl
        def lmcache_register_eviction_policies():
            return [EvictionPolicySpec(name="half", factory=dict)]

        @hookimpl
        def lmcache_register_store_policies():
            raise ValueError("second hook fails")
        """,
    )
    registry = load(site, strict=False)
    assert registry.names(PluginKind.EVICTION_POLICY) == []
    assert "second hook fails" in (registry.broken()[0].error or "")


@pytest.mark.parametrize("how", ["argument", "environment"])
@pytest.mark.parametrize("which", ["entry-point", "distribution"])
def test_disabled_plugins_are_never_imported(
    site: FakeSite, monkeypatch: pytest.MonkeyPatch, how: str, which: str
) -> None:
    module = site.add("fake-blocked", BROKEN_AT_IMPORT, ep_name="blocked_ep")
    name = "blocked_ep" if which == "entry-point" else "fake_blocked"
    if how == "environment":
        monkeypatch.setenv("LMCACHE_DISABLE_PLUGINS", f"other, {name}")
        registry = load(site, strict=True)
    else:
        registry = load(site, strict=True, disabled=[name])
    assert module not in sys.modules
    [record] = registry.records
    assert record.status is PluginStatus.DISABLED
    assert registry.rows()[0].status == "disabled"


def test_duplicate_names_name_both_distributions(site: FakeSite) -> None:
    site.add("fake-one", eviction_plugin("twin"))
    site.add("fake-two", eviction_plugin("Twin"))
    registry = load(site, strict=False)
    with pytest.raises(DuplicatePluginError) as info:
        registry.resolve(PluginKind.EVICTION_POLICY, "twin")
    assert "fake-one 1.0.0" in str(info.value) and "fake-two 1.0.0" in str(info.value)
    assert {row.status for row in registry.rows()} == {"conflict"}
    assert registry.specs(PluginKind.EVICTION_POLICY) == []
    with pytest.raises(DuplicatePluginError, match=r"fake-one 1\.0\.0 and fake-two 1\.0\.0"):
        load(site, strict=True)


def test_alias_colliding_with_another_name_is_a_conflict(site: FakeSite) -> None:
    site.add("fake-one", eviction_plugin("first", aliases=("shared",)))
    site.add("fake-two", eviction_plugin("shared"))
    with pytest.raises(DuplicatePluginError):
        load(site, strict=True)


def test_the_same_distribution_found_twice_is_loaded_once(site: FakeSite) -> None:
    site.add("fake-once", eviction_plugin("once"))
    registry = PluginRegistry(entry_points=site.entry_points() * 2, strict=True)
    assert len(registry.records) == 1
    assert registry.names(PluginKind.EVICTION_POLICY) == ["once"]


def test_pending_plugin_is_listed_and_fails_when_built(site: FakeSite) -> None:
    site.add(
        "fake-later",
        """
        from lmcache_core.plugin import EvictionPolicySpec, hookimpl, pending_factory

        REASON = "lands in a later release"

        @hookimpl
        def lmcache_register_eviction_policies():
            return [EvictionPolicySpec(name="later", not_implemented=REASON,
                                       factory=pending_factory("eviction policy 'later'", REASON))]
        """,
    )
    registry = load(site, strict=True)
    [row] = registry.rows()
    assert row.status == "not implemented yet" and row.error == "lands in a later release"
    with pytest.raises(
        PluginNotImplementedError,
        match=r"'later' \(fake-later 1\.0\.0\) is not implemented yet: lands in a later release",
    ):
        registry.build(PluginKind.EVICTION_POLICY, "later")
    spec = registry.resolve(PluginKind.EVICTION_POLICY, "later")
    with pytest.raises(PluginNotImplementedError):
        spec.factory()


def test_plugin_manager_is_per_registry(site: FakeSite) -> None:
    site.add("fake-fifo", eviction_plugin("fifo"))
    first, second = load(site, strict=True), load(site, strict=True)
    assert first.plugin_manager is not second.plugin_manager
    assert first.names(PluginKind.EVICTION_POLICY) == second.names(PluginKind.EVICTION_POLICY)


def _cli(
    site: FakeSite, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    environment["PYTHONPATH"] = os.pathsep.join([str(site.root), os.environ.get("PYTHONPATH", "")])
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", "from lmcache_core.cli.main import main; main()", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def test_cli_lists_third_party_plugins_from_installed_distributions(site: FakeSite) -> None:
    site.add("fake-fifo", eviction_plugin("fifo"), version="2.0.0")
    site.add("fake-broken", BROKEN_AT_IMPORT)
    result = _cli(site, "plugins", "list", "--json")
    assert result.returncode == 0, result.stderr
    rows = {(r["distribution"], r["name"]): r for r in json.loads(result.stdout)}
    assert rows[("fake-fifo", "fifo")]["status"] == "ok"
    assert rows[("fake-fifo", "fifo")]["version"] == "2.0.0"
    assert rows[("fake-broken", "fake-broken")]["status"] == "broken"
    table = _cli(site, "plugins", "list")
    assert table.returncode == 0
    assert any(
        line.split()[:5] == ["fifo", "eviction_policy", "fake-fifo", "2.0.0", "ok"]
        for line in table.stdout.splitlines()
    )


def test_cli_strict_mode_refuses_a_broken_plugin(site: FakeSite) -> None:
    site.add("fake-broken", BROKEN_AT_IMPORT)
    result = _cli(site, "plugins", "list", env={"LMCACHE_PLUGINS_STRICT": "1"})
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: plugin 'fake-broken'")
    assert "Traceback" not in result.stderr
