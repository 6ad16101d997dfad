"""Optional authentication of the whole HTTP API: API keys, or ``--http-admin-token``.

App-level middleware, so every router is covered, plugin routers included,
without their doing anything.

* API keys (``--api-key-file``, ``LMCACHE_API_KEY``; see
  :mod:`lmcache_core.security.key_sources`), as upstream's 0.5.7 line checks them:
  ``Authorization: Bearer KEY`` or ``X-LMCache-API-Key: KEY``; only ``/`` and
  ``/healthcheck`` stay open; a refusal is a 401 ``{"detail": "Invalid or missing
  API key"}``. The admin token, when also set, is accepted as a Bearer value too.
* The admin token alone: ``Authorization: Bearer TOKEN``; liveness probes,
  Prometheus scrapes and the API description stay open.

Every refusal is counted (``/status`` ``auth.rejected.http``, and ``/metrics``).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from lmcache_core.config.server import ServerConfig
from lmcache_core.security.key_sources import KeySources
from lmcache_core.security.keyring import ApiKeyRing

OPEN_PATHS = frozenset({"/healthcheck", "/metrics", "/openapi.json", "/docs", "/redoc"})
"""Paths answered without a token (``/docs/...`` assets included)."""

API_KEY_OPEN_PATHS = frozenset({"/", "/healthcheck"})
"""Paths answered without an API key (upstream's public paths)."""
API_KEY_HEADER = "x-lmcache-api-key"
INVALID_KEY_DETAIL = "Invalid or missing API key"
LOOPBACK_HOSTS = frozenset({"localhost", "::1", "ip6-localhost"})


def is_open_path(path: str) -> bool:
    """Whether ``path`` is answered without a token."""
    return path in OPEN_PATHS or path.startswith("/docs/")


def _unauthorized(message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": message},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="lmcache"'},
    )


def _bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    return presented if scheme.lower() == "bearer" and presented else None


def require_credentials(app: FastAPI, keys: ApiKeyRing, token: str | None) -> None:
    """Install the check the configuration asks for (none when neither is set).

    Args:
        app: The admin app.
        keys: The accepted API keys (a disabled ring: none configured); its
            counter also counts refusals under the admin token alone.
        token: ``--http-admin-token``, or ``None``.
    """
    if keys.enabled:
        require_api_key(app, keys, token)
    elif token is not None:
        require_bearer_token(app, token, on_reject=lambda: keys.reject("http"))


def require_api_key(app: FastAPI, keys: ApiKeyRing, token: str | None = None) -> None:
    """Make every request outside :data:`API_KEY_OPEN_PATHS` carry an accepted key.

    Args:
        app: The admin app.
        keys: The accepted keys (enabled).
        token: The admin token, accepted as a Bearer value as well, or ``None``.
    """
    expected_token = token.encode() if token is not None else None

    @app.middleware("http")
    async def check_key(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path in API_KEY_OPEN_PATHS:
            return await call_next(request)
        bearer = _bearer(request.headers.get("authorization"))
        # Both headers are checked whatever the first gave, so timing tells nothing.
        by_bearer = keys.accepts(bearer)
        by_header = keys.accepts(request.headers.get(API_KEY_HEADER))
        by_token = (
            expected_token is not None
            and bearer is not None
            and hmac.compare_digest(bearer.encode(), expected_token)
        )
        if by_bearer or by_header or by_token:
            return await call_next(request)
        keys.reject("http")
        return JSONResponse(
            {"detail": INVALID_KEY_DETAIL}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )


def require_bearer_token(
    app: FastAPI, token: str, on_reject: Callable[[], None] | None = None
) -> None:
    """Make every request outside :data:`OPEN_PATHS` present ``Authorization: Bearer TOKEN``.

    The comparison takes the same time whatever the presented value, so the
    token cannot be guessed byte by byte from response times.

    Args:
        app: The admin app.
        token: The expected token.
        on_reject: Called once per refused request (the refusal counter).
    """
    expected = token.encode()

    @app.middleware("http")
    async def check_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if is_open_path(request.url.path):
            return await call_next(request)
        response = _check_token(request.headers.get("authorization"), expected)
        if response is None:
            return await call_next(request)
        if on_reject is not None:
            on_reject()
        return response


def _check_token(header: str | None, expected: bytes) -> JSONResponse | None:
    """The refusal for an ``Authorization`` header, or ``None`` when it carries the token."""
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
    return None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the API on this machine (``0.0.0.0`` does not)."""
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def admin_api_advisories(config: ServerConfig) -> list[str]:
    """Start-up warnings about settings of the admin API that are probably not meant."""
    http, notes = config.http, []
    keys = KeySources.gather(config.mp.api_key_file).configured
    protected = keys or http.http_admin_token is not None
    where = f"{http.http_host}:{http.http_port}"
    if not protected and not is_loopback(http.http_host):
        notes.append(
            f"SECURITY: the admin HTTP API listens on {where}, which is not a loopback "
            "address, with no API key and no --http-admin-token: anyone who can reach it can "
            "read the configuration and cache contents, clear the cache and change quotas. "
            "Set --api-key-file (or LMCACHE_API_KEY) or --http-admin-token, or bind "
            "--http-host 127.0.0.1"
        )
    if not keys and not is_loopback(config.mp.host):
        notes.append(
            f"SECURITY: the ZeroMQ request server listens on {config.mp.host}:{config.mp.port}, "
            "which is not a loopback address, with no API key: anyone who can reach it can read "
            "and overwrite cached KV data. Set --api-key-file (or LMCACHE_API_KEY)"
        )
    if http.run_script_api_enabled and not protected:
        notes.append(
            "--run-script-api-enabled without --http-admin-token or an API key: anyone who "
            f"can reach {where} can run scripts on this host"
        )
    if config.mp.script_allowed_imports and not http.run_script_api_enabled:
        notes.append(
            "--script-allowed-imports has no effect unless --run-script-api-enabled is given"
        )
    return notes
