"""The core's own endpoints: health, status and plugins."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lmcache_core import __version__
from lmcache_core.state import ServerContext

router = APIRouter()


def _context(request: Request) -> ServerContext:
    context: ServerContext = request.app.state.context
    return context


@router.get("/healthcheck", summary="Liveness of every server component")
def healthcheck(request: Request) -> JSONResponse:
    """200 when every started component answers its probe, 503 otherwise."""
    components = _context(request).lifecycle.health()
    healthy = all(h.ok for h in components.values())
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "components": {name: {"ok": h.ok, "detail": h.detail} for name, h in components.items()},
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/status", summary="Instance, configuration summary and plugins")
def status(request: Request) -> dict[str, Any]:
    """The server's identity, uptime, resolved configuration and selected plugins."""
    context = _context(request)
    return {
        "instance_id": context.instance_id,
        "version": __version__,
        "uptime_seconds": round(time.time() - context.started_at, 3),
        "config": context.config.public_dict(),
        "plugins": context.selection.describe(context.registry),
        "startup": context.report.as_dict(),
        "data_path": context.data_path.status() if context.data_path is not None else None,
        "runtime_plugins": (
            context.runtime_plugins.status() if context.runtime_plugins is not None else []
        ),
        "event_bus": context.bus.status(),
        "auth": context.api_keys.status(),
        "components": {
            name: {"ok": h.ok, "detail": h.detail} for name, h in context.lifecycle.health().items()
        },
    }


@router.get("/plugins", summary="Every installed plugin with its distribution and status")
def plugins(request: Request) -> list[dict[str, Any]]:
    """The same rows as ``lmcache plugins list --json``."""
    return [row.as_dict() for row in _context(request).registry.rows()]
