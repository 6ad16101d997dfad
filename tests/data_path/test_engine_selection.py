"""Every server of the suite runs the engine ``--engine-type`` names (default: ``default``)."""

from __future__ import annotations

from lmcache_core.plugin import PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from tests.data_path.conftest import Server


def test_the_shared_server_runs_the_selected_engine(main_server: Server, engine_type: str) -> None:
    expected = PluginRegistry(strict=True).resolve(PluginKind.ENGINE, engine_type)
    selected = main_server.full_status()["plugins"]["engine"]
    assert selected["name"] == expected.name
    assert selected["status"] == "ok"
