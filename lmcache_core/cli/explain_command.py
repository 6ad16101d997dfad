"""``lmcache explain REQUEST_ID``: why did this request's latest lookup miss?

A client of ``GET /lookups/{request_id}``: a readable summary (tokens and
chunks requested and hit, chunks per tier, the first missing chunk and its
cause, a table of causes), or the server's answer as it is with ``--json``.
An unknown request id exits 1 with the server's reason.
"""

from __future__ import annotations

import datetime
import urllib.parse
from typing import Annotated, Any

import typer

from lmcache_core.cli.admin_client import (
    DEFAULT_URL,
    AdminClient,
    JsonOption,
    TimeoutOption,
    TokenOption,
    UrlOption,
    print_json,
    table,
)
from lmcache_core.observability.miss_causes import DESCRIPTIONS, MissCause


def explain(
    request_id: Annotated[str, typer.Argument(help="The engine's request id.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Why did REQUEST_ID's latest lookup miss? (tiers hit, first miss, causes)."""
    path = "/lookups/" + urllib.parse.quote(request_id, safe="")
    body = AdminClient(url, token, timeout).call("GET", path).body
    if as_json:
        print_json(body)
    else:
        typer.echo(explanation_text(body))


def explanation_text(body: dict[str, Any]) -> str:
    """The readable form of one ``GET /lookups/{request_id}`` answer."""
    requested, hit = body["requested_chunks"], body["hit_chunks"]
    tokens, hit_tokens = body["requested_tokens"], body["hit_tokens"]
    at = datetime.datetime.fromtimestamp(body["at"], datetime.UTC).isoformat(timespec="seconds")
    worker = body.get("worker_id")
    rows: list[tuple[str, Any]] = [
        ("request", body["request_id"]),
        ("model", body["model_name"]),
        ("cache salt", body["cache_salt"] or "(none)"),
        (
            "world size",
            body["world_size"] if worker is None else f"{body['world_size']} (worker {worker})",
        ),
        ("looked up", f"{at} ({body['duration_s'] * 1000:.1f} ms)"),
        ("tokens", f"{hit_tokens} of {tokens} hit ({_share(hit_tokens, tokens)})"),
        ("chunks", f"{hit} of {requested} full chunks of {body['chunk_size']} tokens hit"),
    ]
    tiers = ", ".join(f"{tier} {_count(n)}" for tier, n in body["hit_chunks_by_tier"].items())
    rows.append(("hit by tier", tiers))
    first = body.get("first_miss")
    rows.append(("first miss", _first_miss(first) if first else "none: every chunk was a hit"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    causes = body["miss_chunks_by_cause"]
    if causes:
        lines.append("")
        lines.append(
            table(
                ("cause", "chunks", "meaning"),
                [
                    (cause, count, DESCRIPTIONS.get(MissCause(cause), ""))
                    for cause, count in sorted(causes.items(), key=lambda item: -item[1])
                ],
            )
        )
    return "\n".join(lines)


def _first_miss(first: dict[str, Any]) -> str:
    text = f"chunk {first['chunk']}: {first['cause']}"
    if first.get("tier"):
        removed = first.get("removed_at")
        when = (
            datetime.datetime.fromtimestamp(removed, datetime.UTC).isoformat(timespec="seconds")
            if removed
            else "at an unknown time"
        )
        policy = f" by {first['policy']}" if first.get("policy") else ""
        text += f" from {first['tier']} ({first.get('reason')}{policy}) at {when}"
    return text


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"
