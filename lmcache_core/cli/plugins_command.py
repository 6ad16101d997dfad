"""``lmcache plugins``: what is installed, from which distribution, in what state."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from lmcache_core.plugin.registry import PluginRegistry, SpecRow

app = typer.Typer(help="Inspect the installed plugins.", no_args_is_help=True)

COLUMNS = ("name", "kind", "distribution", "version", "status")


def format_table(rows: list[SpecRow]) -> str:
    """Rows as an aligned text table, sorted by kind then name."""
    ordered = sorted(rows, key=lambda r: (r.kind, r.name.lower()))
    cells = [[c.upper() for c in COLUMNS]]
    for row in ordered:
        status = f"{row.status}: {row.error}" if row.error else row.status
        cells.append([row.name, row.kind, row.distribution, row.version, status])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS) - 1)]
    lines = []
    for line in cells:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        lines.append("  ".join([*padded, line[-1]]).rstrip())
    return "\n".join(lines)


@app.command("list")
def list_plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every plugin: name, kind, distribution, version and status."""
    rows = PluginRegistry().rows()
    if as_json:
        typer.echo(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        typer.echo(format_table(rows))
