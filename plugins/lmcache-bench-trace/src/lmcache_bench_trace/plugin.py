"""Registers the ``lmcache bench`` command group (``lmcache bench trace``)."""

from __future__ import annotations

from lmcache_bench_trace.command import build_command
from lmcache_core.plugin import CliCommandSpec, hookimpl


@hookimpl
def lmcache_register_cli_commands() -> list[CliCommandSpec]:
    """Register ``bench``.

    Returns:
        Its one spec.
    """
    return [
        CliCommandSpec(
            name="bench",
            factory=build_command,
            description="Benchmarks: 'lmcache bench trace' replays a workload trace.",
        )
    ]
