"""Configuration of the ``resp`` L2 adapter (Redis or Valkey over raw RESP)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

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

    host: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Server host name or address (required without cluster; with it, a seed node; "
            "env LMCACHE_RESP_HOST)."
        ),
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description=(
            "Server TCP port (required without cluster; with it, a seed node's; "
            "env LMCACHE_RESP_PORT)."
        ),
    )
    cluster: bool = Field(
        default=False,
        description=(
            "The server is a Redis Cluster: keys go to the primary of their hash slot, MOVED "
            "and ASK are followed and the slot map is re-read when a shard fails."
        ),
    )
    seed_nodes: list[str] = Field(
        default_factory=list,
        description=(
            "With cluster: more 'host:port' nodes to read the slot map from (host and port, "
            "when given, are the first seed)."
        ),
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

    @field_validator("seed_nodes")
    @classmethod
    def _seed_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            parse_address(address)
        return value

    @model_validator(mode="after")
    def _username_needs_password(self) -> RespAdapterConfig:
        if self.username is not None and self.password is None:
            raise ValueError("username needs a password")
        return self

    @model_validator(mode="after")
    def _an_address(self) -> RespAdapterConfig:
        if (self.host is None) != (self.port is None):
            missing = "port" if self.port is None else "host"
            raise ValueError(
                f"{missing} is required with {'host' if missing == 'port' else 'port'}"
            )
        if not self.cluster:
            if self.seed_nodes:
                raise ValueError('seed_nodes needs "cluster": true')
            if self.host is None:
                raise ValueError("host and port are required (or cluster with seed_nodes)")
        elif self.host is None and not self.seed_nodes:
            raise ValueError("cluster needs seed_nodes, or host and port")
        return self

    def seeds(self) -> list[tuple[str, int]]:
        """The cluster's seed nodes: ``host:port`` first, then ``seed_nodes``."""
        seeds = [(self.host, self.port)] if self.host is not None and self.port is not None else []
        return list(dict.fromkeys([*seeds, *(parse_address(a) for a in self.seed_nodes)]))


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a pair.

    Raises:
        ValueError: Not ``host:port`` with a port in 1-65535.
    """
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"seed_nodes: {address!r} is not host:port")
    return host, int(port)
