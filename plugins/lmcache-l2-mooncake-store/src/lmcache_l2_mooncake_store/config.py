"""Configuration of the ``mooncake_store`` L2 adapter (a Mooncake distributed store).

The keys are upstream's: the adapter's own (``num_workers``, ``per_op_workers``,
``eviction``) and the ones Mooncake's ``setup`` reads (``local_hostname``,
``metadata_server``, ``master_server_addr``, ``protocol``,
``global_segment_size``, ``local_buffer_size``, ``rdma_devices``), plus
``replica_num``. Upstream forwards every other key verbatim to Mooncake, where a
misspelt one is silently ignored: a misspelt master address then makes the
client dial the default master for more than a minute. Here every key is named,
so an unknown one fails validation with its name.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from lmcache_core.config.l2_adapter import L2AdapterConfigBase

MooncakeOp = Literal["lookup", "retrieve", "store", "delete"]
"""The operations that can get their own worker count."""

ALIASES: dict[str, str] = {
    "master_server_address": "master_server_addr",
    "device_name": "rdma_devices",
}
"""Other spellings of a key -> the key (upstream's notes and the ``mooncake_client``
binary use the first names; Mooncake's Python ``setup`` reads only the second)."""

METADATA_SCHEMES = ("http://", "https://", "etcd://", "redis://")
"""Prefixes of a metadata server address besides ``P2PHANDSHAKE``."""

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str) -> int:
    """Bytes of a size given as an integer or a string such as ``"512MB"`` or ``"1 GiB"``.

    Units are binary (``MB`` = MiB), as in Mooncake's own parser.

    Raises:
        ValueError: Not a non-negative size.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size must be >= 0, not {value}")
        return value
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size (an integer or e.g. '512MB', '1 GiB')")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def parse_host_port(value: str, field: str) -> tuple[str, int]:
    """``host:port`` as a pair.

    Raises:
        ValueError: Not ``host:port`` with a port in 1-65535, naming ``field``.
    """
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{field}: {value!r} is not host:port")
    return host, int(port)


class MooncakeStoreAdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "mooncake_store", ...}``.

    ``master_server_address`` is accepted for ``master_server_addr`` and
    ``device_name`` for ``rdma_devices``; giving both spellings is an error.
    """

    local_hostname: str = Field(
        min_length=1,
        description="Address this node's transfer engine advertises to its peers.",
    )
    metadata_server: str = Field(
        default="P2PHANDSHAKE",
        description=(
            "Transfer-engine metadata: P2PHANDSHAKE (peers exchange it directly; no "
            "metadata server) or an http://, etcd:// or redis:// address."
        ),
    )
    master_server_addr: str = Field(
        description="host:port of mooncake_master (alias master_server_address)."
    )
    protocol: Literal["tcp", "rdma"] = Field(
        default="tcp", description="Transfer protocol; rdma registers the whole L1 arena."
    )
    global_segment_size: int = Field(
        default=3355443200,
        ge=0,
        description=(
            "Bytes this node lends to the cluster's pool (an integer or e.g. '3GB'); 0 "
            "makes it a pure client of standalone store nodes."
        ),
    )
    local_buffer_size: int = Field(
        default=16 << 20,
        ge=0,
        description=(
            "Bytes of Mooncake's own transfer buffer (an integer or e.g. '16MB'); the "
            "adapter moves data from registered memory and needs little."
        ),
    )
    rdma_devices: str = Field(
        default="", description="RDMA devices, comma-separated (alias device_name)."
    )
    replica_num: int = Field(default=1, ge=1, description="Replicas of each stored object.")
    connect_timeout_s: float = Field(
        default=2.0,
        gt=0.0,
        le=60.0,
        allow_inf_nan=False,
        description=(
            "How long start-up waits for the master (and an http metadata server) to "
            "accept a TCP connection before it fails naming the address."
        ),
    )
    num_workers: int = Field(default=4, gt=0, description="Worker threads for all operations.")
    per_op_workers: dict[MooncakeOp, Annotated[int, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Worker threads per operation (lookup, retrieve, store, delete).",
    )

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for alias, key in ALIASES.items():
            if alias in merged:
                if key in merged:
                    raise ValueError(f"{alias} and {key} name the same setting: give one")
                merged[key] = merged.pop(alias)
        return merged

    @field_validator("global_segment_size", "local_buffer_size", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str | int) else value

    @field_validator("master_server_addr")
    @classmethod
    def _master(cls, value: str) -> str:
        parse_host_port(value, "master_server_addr")
        return value

    @field_validator("metadata_server")
    @classmethod
    def _metadata(cls, value: str) -> str:
        if value != "P2PHANDSHAKE" and not value.startswith(METADATA_SCHEMES):
            raise ValueError(
                f"metadata_server: {value!r} is neither P2PHANDSHAKE nor an "
                f"{', '.join(METADATA_SCHEMES)} address"
            )
        return value

    def master(self) -> tuple[str, int]:
        """The master's host and port."""
        return parse_host_port(self.master_server_addr, "master_server_addr")

    def workers_for(self, op: MooncakeOp) -> int:
        """Worker threads of one operation (``per_op_workers``, else ``num_workers``)."""
        return self.per_op_workers.get(op, self.num_workers)

    def mooncake_setup(self) -> dict[str, str]:
        """The dictionary passed to Mooncake's ``setup`` (it reads strings)."""
        return {
            "local_hostname": self.local_hostname,
            "metadata_server": self.metadata_server,
            "master_server_addr": self.master_server_addr,
            "protocol": self.protocol,
            "global_segment_size": str(self.global_segment_size),
            "local_buffer_size": str(self.local_buffer_size),
            "rdma_devices": self.rdma_devices,
        }
