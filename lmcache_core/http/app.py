"""The FastAPI app factory of the HTTP frontend."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from lmcache_core import __version__
from lmcache_core.errors import PluginError, PluginNotImplementedError
from lmcache_core.http.admin_routes import router as admin_router
from lmcache_core.http.auth import require_credentials
from lmcache_core.http.core_routes import router as core_router
from lmcache_core.http.lookup_routes import router as lookup_router
from lmcache_core.http.quota_routes import router as quota_router
from lmcache_core.http.run_script import router as run_script_router
from lmcache_core.plugin.specs import HttpRouterSpec, PluginKind
from lmcache_core.state import ServerContext

logger = logging.getLogger("lmcache.http")


def create_app(context: ServerContext) -> FastAPI:
    """Build the admin app: core routes, then every plugin router.

    Args:
        context: The running server's shared state (``app.state.context``).

    Raises:
        PluginError: A plugin router failed to build.
    """
    app = FastAPI(
        title="LMCache MP server",
        version=__version__,
        description="Admin API of the LMCache multiprocess KV-cache server.",
    )
    app.state.context = context
    app.include_router(core_router)
    app.include_router(admin_router)
    app.include_router(run_script_router)
    # Middleware wraps the whole app, so plugin routers below are covered too.
    require_credentials(app, context.api_keys, context.config.http.http_admin_token)
    app.include_router(quota_router)
    app.include_router(lookup_router)
    for spec in context.registry.specs(PluginKind.HTTP_ROUTER):
        assert isinstance(spec, HttpRouterSpec)
        try:
            # Plugin routers get the read-only view, never the assembled server itself.
            app.include_router(
                context.registry.builder.http_router(spec, context.state), prefix=spec.prefix
            )
        except PluginNotImplementedError:
            raise  # the plugin's own reason, as before: not a build failure
        except Exception as exc:
            raise PluginError(f"HTTP router {spec.name!r} failed to build: {exc}") from exc
    return app
