"""``lmcache ping``, ``status``, ``explain``, ``quota list|get|set|delete`` and ``cache clear``.

Each talks to a running server's HTTP API (``--url``, ``--token``); ``--json``
prints the server's answer as it is, otherwise a readable summary.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Annotated, Any

import typer

from lmcache_core.cli.admin_client import (
    DEFAULT_URL,
    AdminClient,
    AdminError,
    JsonOption,
    TimeoutOption,
    TokenOption,
    UrlOption,
    gib,
    print_json,
    table,
)
from lmcache_core.cli.explain_command import explain

DEFAULT_SALT_PATH = "_default"
"""The quota API's name of the empty salt."""

quota_app = typer.Typer(help="Per-salt quotas (the /quota API).", no_args_is_help=True)
cache_app = typer.Typer(help="The cache's contents (the /cache API).", no_args_is_help=True)


def ping(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Check that the server answers and every component is healthy (exit 1 if not)."""
    started = time.monotonic()
    answer = AdminClient(url, token, timeout).call("GET", "/healthcheck", accept=(503,))
    elapsed_ms = (time.monotonic() - started) * 1000
    body = answer.body if isinstance(answer.body, dict) else {}
    if as_json:
        print_json(answer.body)
    elif answer.status == 200:
        typer.echo(f"healthy: {url} answered in {elapsed_ms:.1f} ms")
    else:
        sick = [
            f"{name} ({part.get('detail')})"
            for name, part in body.get("components", {}).items()
            if not part.get("ok")
        ]
        typer.echo(f"unhealthy: {url}: {', '.join(sick) or 'no detail'}")
    if answer.status != 200:
        raise typer.Exit(1)


def _answer(client: AdminClient, as_json: bool, method: str, path: str, payload: Any = None) -> Any:
    """Call the API; with ``--json`` print the answer as it is and return None.

    Every command but ``ping`` shows its answer this way, so the ``--json`` rule
    lives here once. The commands' endpoints all answer a JSON object, so None
    only ever means "already printed".
    """
    body = client.call(method, path, payload).body
    if as_json:
        print_json(body)
        return None
    return body


def status(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 5.0,
) -> None:
    """The server's identity, health, tiers and plugins."""
    body = _answer(AdminClient(url, token, timeout), as_json, "GET", "/status")
    if body is not None:
        typer.echo(_status_text(body))


def _status_text(body: dict[str, Any]) -> str:
    components = body.get("components", {})
    sick = [name for name, part in components.items() if not part.get("ok")]
    rows: list[tuple[str, Any]] = [
        ("instance", body.get("instance_id")),
        ("version", body.get("version")),
        ("uptime", f"{body.get('uptime_seconds', 0):.0f} s"),
        ("health", "healthy" if not sick else f"unhealthy: {', '.join(sick)}"),
    ]
    plugins = body.get("plugins", {})
    for kind in ("engine", "eviction_policy", "store_policy", "prefetch_policy"):
        if kind in plugins:
            rows.append((kind.replace("_", " "), plugins[kind].get("name")))
    data_path = body.get("data_path") or {}
    l1 = data_path.get("l1")
    if l1:
        rows.append(
            (
                "L1",
                f"{gib(l1.get('used_bytes'))} / {gib(l1.get('capacity_bytes'))} GiB, "
                f"{l1.get('resident_objects')} objects ({l1.get('kind')})",
            )
        )
    l2 = (data_path.get("engine") or {}).get("l2") or {}
    for index, adapter in enumerate(l2.get("adapters", []), start=1):
        rows.append(
            (
                f"L2 #{index}",
                f"{adapter.get('type')}: {gib(adapter.get('used_bytes'))} GiB, "
                f"{adapter.get('objects')} objects, "
                f"{'healthy' if adapter.get('is_healthy') else 'unhealthy'}",
            )
        )
    for warning in (body.get("startup") or {}).get("warnings", []):
        rows.append(("warning", warning))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)


def _salt_path(salt: str) -> str:
    return urllib.parse.quote(salt or DEFAULT_SALT_PATH, safe="")


SaltArgument = Annotated[
    str, typer.Argument(help=f"The cache salt ({DEFAULT_SALT_PATH} for the empty salt).")
]


@quota_app.command("list")
def quota_list(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Every salt with a quota: its limit and current usage."""
    body = _answer(AdminClient(url, token, timeout), as_json, "GET", "/quota")
    if body is None:
        return
    users = body.get("users", {})
    rows = [
        (salt, f"{entry.get('limit_gb'):g}", f"{entry.get('current_usage_gb', 0):.3f}")
        for salt, entry in users.items()
    ]
    typer.echo(table(("SALT", "LIMIT_GB", "USAGE_GB"), rows) if rows else "no quotas set")
    if body.get("note"):
        typer.echo(f"note: {body['note']}")


@quota_app.command("get")
def quota_get(
    salt: SaltArgument,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 5.0,
) -> None:
    """One salt's limit and usage."""
    body = _answer(AdminClient(url, token, timeout), as_json, "GET", f"/quota/{_salt_path(salt)}")
    if body is None:
        return
    if not body.get("exists"):
        typer.echo(f"{body.get('cache_salt')}: no quota (limit 0)")
    typer.echo(
        table(
            ("SALT", "LIMIT_GB", "USAGE_GB"),
            [
                (
                    body.get("cache_salt"),
                    f"{body.get('limit_gb'):g}",
                    f"{body.get('current_usage_gb', 0):.3f}",
                )
            ],
        )
    )


@quota_app.command("set")
def quota_set(
    salt: SaltArgument,
    limit_gb: Annotated[float, typer.Argument(help="The limit in GiB (>= 0).")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Set (or replace) a salt's quota."""
    client = AdminClient(url, token, timeout)
    body = _answer(client, as_json, "PUT", f"/quota/{_salt_path(salt)}", {"limit_gb": limit_gb})
    if body is not None:
        typer.echo(f"quota of {body.get('cache_salt')} set to {body.get('limit_gb'):g} GiB")


@quota_app.command("delete")
def quota_delete(
    salt: SaltArgument,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Remove a salt's quota (its limit becomes 0)."""
    client = AdminClient(url, token, timeout)
    body = _answer(client, as_json, "DELETE", f"/quota/{_salt_path(salt)}")
    if body is None:
        return
    if body.get("status") == "removed":
        typer.echo(f"quota of {body.get('cache_salt')} removed")
    else:
        typer.echo(f"{body.get('cache_salt')} had no quota")


@cache_app.command("clear")
def cache_clear(
    tier: Annotated[str, typer.Option("--tier", help="l1, l2 or all.")] = "l1",
    force: Annotated[
        bool, typer.Option("--force", help="Also remove objects readers hold.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Remove every object of a tier (objects being read are kept unless --force)."""
    if tier not in ("l1", "l2", "all"):
        raise AdminError(f"--tier must be l1, l2 or all, not {tier!r}")
    client = AdminClient(url, token, timeout)
    body = _answer(client, as_json, "POST", "/cache/clear", {"tier": tier, "force": force})
    if body is None:
        return
    rows = [
        (
            result.get("tier"),
            ""
            if result.get("adapter") is None
            else f"#{result['adapter']} {result['adapter_type']}",
            result.get("removed"),
            result.get("kept_locked"),
        )
        for result in body.get("results", [])
    ]
    typer.echo(table(("TIER", "ADAPTER", "REMOVED", "KEPT_LOCKED"), rows))


def register(app: typer.Typer) -> None:
    """Add the admin commands to the ``lmcache`` app."""
    app.command("ping")(ping)
    app.command("status")(status)
    app.command("explain")(explain)
    app.add_typer(quota_app, name="quota")
    app.add_typer(cache_app, name="cache")
