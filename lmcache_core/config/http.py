"""The HTTP Frontend flag group."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, field_validator

from lmcache_core.config.base import CliMeta, GroupSettings

MIN_ADMIN_TOKEN_LENGTH = 16
"""Shorter bearer tokens are refused: they could be guessed over the network."""


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
    http_admin_token: Annotated[str | None, CliMeta(metavar="TOKEN", default_text="not set")] = (
        Field(
            default=None,
            description=(
                "Bearer token the HTTP API requires (Authorization: Bearer TOKEN) on every "
                "endpoint except /healthcheck, /metrics and the OpenAPI pages. Not set: no "
                "authentication. At least 16 characters; prefer the environment variable to "
                "the flag, which other users can read in the process list. Not in the "
                "reference: upstream's HTTP API has no authentication."
            ),
        )
    )
    run_script_api_enabled: bool = Field(
        default=False,
        description=(
            "Enable POST /run_script, which runs an uploaded Python script in a restricted "
            "subprocess (see the admin API docs for what is and is not guaranteed). Off: the "
            "endpoint answers 404. Not in the reference's table: upstream's flag."
        ),
    )

    @field_validator("http_admin_token")
    @classmethod
    def _check_token(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if len(value) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN_LENGTH} characters")
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            raise ValueError("must not contain whitespace or control characters")
        return value
