"""lmcache-bench-trace: registered from its declared entry point, and built."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from lmcache_core.plugin import CliCommandSpec, PluginKind
from lmcache_core.plugin.registry import ENTRY_POINT_GROUP, PluginRegistry

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def registry() -> PluginRegistry:
    """A strict registry of the entry points pyproject.toml declares (no install needed)."""
    group = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    entry_points = [metadata.EntryPoint(n, v, ENTRY_POINT_GROUP) for n, v in group.items()]
    return PluginRegistry(strict=True, entry_points=entry_points)


def registered_spec() -> CliCommandSpec:
    spec = registry().resolve(PluginKind.CLI_COMMAND, "bench")
    assert isinstance(spec, CliCommandSpec)
    return spec


def test_the_command_is_built() -> None:
    command = registry().builder.cli_command(registered_spec())
    assert callable(command)


def test_lmcache_bench_trace_passes_its_arguments_to_the_replay_parser() -> None:
    import typer
    from typer.testing import CliRunner

    app = registry().builder.cli_command(registered_spec())
    assert isinstance(app, typer.Typer)
    result = CliRunner().invoke(app, ["trace", "--help"])
    assert result.exit_code == 0
    assert "--as-fast-as-possible" in result.output and "--simulate" in result.output
    result = CliRunner().invoke(app, ["trace", "--trace", "t.jsonl", "--concurrency", "17"])
    assert result.exit_code == 2
    assert "--concurrency must be in 1..16" in result.output
