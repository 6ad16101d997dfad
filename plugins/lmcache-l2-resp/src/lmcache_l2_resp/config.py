"""Configuration of the ``resp`` L2 adapter (Redis or Valkey over raw RESP)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, SecretStr, model_validator

from lmcache_core.config.l2_adapter import L2AdapterConfigBase

ENV_FALLBACKS: dict[str, str] = {
    "host": "LMCACHE_RESP_HOST",
    "port": "LMCACHE_RESP_PORT",
    "username": "LMCACHE_RESP_USERNAME",
    "password": "LMCACHE_RESP_PASSWORD",
}
"""Field -> environment variable read when the field is absent from the JSON."""


class RespAdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "resp", ...}``.

    ``host``, ``port``, ``username`` and ``password`` fall back to the variables
    of :data:`ENV_FALLBACKS` when the JSON omits them, so secrets need not appear
    on the command line. A value in the JSON always wins.
    """

    host: str = Field(
        min_length=1, description="Server host name or address (required; env LMCACHE_RESP_HOST)."
    )
    port: int = Field(
        ge=1, le=65535, description="Server TCP port (required; env LMCACHE_RESP_PORT)."
    )
    num_workers: int = Field(
        default=8,
        gt=0,
        description=(
            "Worker threads; each uses at most one connection for values (SET, GET) and one "
            "for other commands."
        ),
    )
    username: str | None = Field(
        default=None,
        min_length=1,
        description="ACL user for AUTH; needs a password (env LMCACHE_RESP_USERNAME).",
    )
    password: SecretStr | None = Field(
        default=None, description="Password for AUTH (env LMCACHE_RESP_PASSWORD)."
    )
    max_capacity_gb: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Capacity in GiB enforced by an eviction block; 0 means unlimited.",
    )

    @model_validator(mode="before")
    @classmethod
    def _environment_fallbacks(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for field, variable in ENV_FALLBACKS.items():
            value = os.environ.get(variable)
            if field not in merged and value:
                merged[field] = value
        return merged

    @model_validator(mode="after")
    def _username_needs_password(self) -> RespAdapterConfig:
        if self.username is not None and self.password is None:
            raise ValueError("username needs a password")
        return self
