"""``lmcache bench trace``: the trace replay from the admin CLI.

The sub-command passes its arguments to the same parser as
``benchmarks/bench_trace.py`` (``lmcache bench trace --help`` lists them), so
an operator sizes L1 and L2 for their own trace against any running server
(``--url``) or one it starts.
"""

from __future__ import annotations

import typer

from lmcache_bench_trace.cli import main as trace_main

app = typer.Typer(help="Benchmarks against a running or started server.", no_args_is_help=True)


@app.callback()
def bench() -> None:
    """Benchmarks against a running or started server (a group even with one command)."""


@app.command(
    "trace",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def trace(ctx: typer.Context) -> None:
    """Replay a Mooncake-format trace (see ``lmcache bench trace --help``)."""
    raise typer.Exit(trace_main(list(ctx.args)))


def build_command() -> typer.Typer:
    """The spec's factory: the ``bench`` command group."""
    return app
