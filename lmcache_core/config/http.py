"""The HTTP Frontend flag group."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from lmcache_core.config.base import GroupSettings


class HTTPFrontendConfig(GroupSettings):
    """Where the FastAPI/uvicorn admin frontend listens."""

    panel: ClassVar[str] = "HTTP Frontend"
    source: ClassVar[str] = "lmcache/v1/multiprocess/config.py"
    summary: ClassVar[str] = "The HTTP frontend is included when running lmcache server."

    http_host: str = Field(
        default="0.0.0.0",
        min_length=1,
        description="Host to bind the HTTP (FastAPI/uvicorn) server.",
    )
    http_port: int = Field(
        default=8080, ge=1, le=65535, description="Port to bind the HTTP server."
    )
