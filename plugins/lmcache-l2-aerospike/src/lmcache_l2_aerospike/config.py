"""Configuration of the ``aerospike`` L2 adapter (the native Aerospike connector)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator

from lmcache_core.config.l2_adapter import L2AdapterConfigBase


def parse_hosts(hosts: str) -> list[tuple[str, int]]:
    """Split ``host:port[,host:port...]`` into pairs.

    Args:
        hosts: The seed host list.

    Returns:
        ``(host, port)`` pairs in the given order.

    Raises:
        ValueError: An entry lacks a host or has a port outside 1..65535.
    """
    pairs: list[tuple[str, int]] = []
    for entry in hosts.split(","):
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"hosts entry {entry.strip()!r} is not host:port (port 1..65535)")
        pairs.append((host, int(port)))
    return pairs


class AerospikeAdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "aerospike", ...}``.

    ``set`` is accepted as another name of ``set_name``.
    """

    hosts: str = Field(description="Seed hosts, 'host:port[,host:port...]' (required).")
    namespace: str = Field(default="lmcache", min_length=1, description="Aerospike namespace.")
    set_name: str = Field(
        default="kv_chunks",
        min_length=1,
        validation_alias=AliasChoices("set_name", "set"),
        description="Aerospike set; may also be given as `set`.",
    )
    num_workers: int = Field(default=8, gt=0, description="I/O worker threads of the connector.")
    read_timeout_ms: int = Field(default=1000, gt=0, description="Client read timeout in ms.")
    write_timeout_ms: int = Field(default=2000, gt=0, description="Client write timeout in ms.")
    default_ttl_seconds: int = Field(
        default=86400, ge=0, description="Record TTL in seconds; 0 uses the namespace default."
    )
    target_segment_bytes: int = Field(
        default=0,
        ge=0,
        description="Target size of the records a large value is split into; 0 = auto.",
    )
    max_record_bytes: int = Field(
        default=0, ge=0, description="Record size cap; 0 discovers it from the server."
    )
    username: str | None = Field(
        default=None, min_length=1, description="Enterprise Edition user; needs a password."
    )
    password: SecretStr | None = Field(
        default=None, description="Enterprise Edition password; needs a username."
    )
    max_capacity_gb: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Capacity in GiB for eviction; 0 disables capacity tracking.",
    )

    @field_validator("hosts")
    @classmethod
    def _host_list(cls, value: str) -> str:
        parse_hosts(value)
        return value

    @model_validator(mode="after")
    def _credentials_together(self) -> AerospikeAdapterConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together, or neither")
        return self
