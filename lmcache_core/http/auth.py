"""Optional bearer-token authentication of the whole HTTP API (``--http-admin-token``).

App-level middleware, so every router is covered, plugin routers included,
without their doing anything. Liveness probes, Prometheus scrapes and the API
description stay open: they carry no secrets and must work without credentials.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from lmcache_core.config.server import ServerConfig

OPEN_PATHS = frozenset({"/healthcheck", "/metrics", "/openapi.json", "/docs", "/redoc"})
"""Paths answered without a token (``/docs/...`` assets included)."""


def is_open_path(path: str) -> bool:
    """Whether ``path`` is answered without a token."""
    return path in OPEN_PATHS or path.startswith("/docs/")


def _unauthorized(message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": message},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="lmcache"'},
    )


def require_bearer_token(app: FastAPI, token: str) -> None:
    """Make every request outside :data:`OPEN_PATHS` present ``Authorization: Bearer TOKEN``.

    The comparison takes the same time whatever the presented value, so the
    token cannot be guessed byte by byte from response times.

    Args:
        app: The admin app.
        token: The expected token.
    """
    expected = token.encode()

    @app.middleware("http")
    async def check_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if is_open_path(request.url.path):
            return await call_next(request)
        header = request.headers.get("authorization")
        if header is None:
            return _unauthorized(
                "authentication required: send 'Authorization: Bearer <token>' "
                "(the server's --http-admin-token)"
            )
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return _unauthorized("the Authorization header must be 'Bearer <token>'")
        if not hmac.compare_digest(presented.strip().encode(), expected):
            return _unauthorized("invalid bearer token")
        return await call_next(request)


def admin_api_advisories(config: ServerConfig) -> list[str]:
    """Start-up warnings about settings of the admin API that are probably not meant."""
    http, notes = config.http, []
    if http.run_script_api_enabled and http.http_admin_token is None:
        notes.append(
            "--run-script-api-enabled without --http-admin-token: anyone who can reach "
            f"{http.http_host}:{http.http_port} can run scripts on this host"
        )
    if config.mp.script_allowed_imports and not http.run_script_api_enabled:
        notes.append(
            "--script-allowed-imports has no effect unless --run-script-api-enabled is given"
        )
    return notes
