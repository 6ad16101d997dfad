"""The MP Server flag group (ZeroMQ server, workers, hashing, engine selection, sessions).

An engine's own flags (the default engine's worker-reaping budgets, for example)
are declared by its plugin and join this group's panel when it is installed.
"""

from __future__ import annotations

import keyword
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from lmcache_core.config.base import CliMeta, GroupSettings, parse_json_object, parse_word_list

HashAlgorithm = Literal["builtin", "sha256_cbor", "blake3"]
TransferMode = Literal["lmcache_driven", "engine_driven", "auto"]


def _new_instance_id() -> str:
    return str(uuid.uuid4())


class MPServerConfig(GroupSettings):
    """Identity, ZeroMQ endpoint, thread pools, hashing and worker liveness."""

    panel: ClassVar[str] = "MP Server"
    source: ClassVar[str] = "lmcache/v1/multiprocess/config.py"
    summary: ClassVar[str] = "The request server, its thread pools, hashing and worker liveness."

    instance_id: Annotated[str, CliMeta(default_text="unset: a fresh UUID v4")] = Field(
        default_factory=_new_instance_id,
        min_length=1,
        description=(
            "Stable identity of this MP server, projected onto the OTel service.instance.id "
            "resource attribute of every metric and span. Defaults to a random UUID v4 minted "
            "at start-up."
        ),
    )
    host: str = Field(
        default="localhost", min_length=1, description="Host address to bind the ZMQ server."
    )
    port: int = Field(default=5555, ge=1, le=65535, description="Port to bind the ZMQ server.")
    chunk_size: int = Field(
        default=256, ge=1, description="Chunk size for KV cache operations (in tokens)."
    )
    max_workers: int = Field(
        default=1,
        ge=1,
        description=(
            "Base number of worker threads: the default of both the GPU (affinity) pool and "
            "the CPU (normal) pool."
        ),
    )
    max_gpu_workers: Annotated[int, CliMeta(default_text="inherits --max-workers")] = Field(
        default=None,  # type: ignore[assignment]  # filled from max_workers below
        ge=1,
        description=(
            "Worker threads for the GPU affinity pool (STORE/RETRIEVE). Requests from the same "
            "engine instance always go to the same thread."
        ),
    )
    max_cpu_workers: Annotated[int, CliMeta(default_text="inherits --max-workers")] = Field(
        default=None,  # type: ignore[assignment]  # filled from max_workers below
        ge=1,
        description="Worker threads for the normal CPU pool (LOOKUP, etc.).",
    )
    hash_algorithm: HashAlgorithm = Field(
        default="blake3", description="Hash algorithm for token-based operations."
    )
    engine_type: Annotated[str, CliMeta(metavar="ENGINE")] = Field(
        default="default",
        description=(
            "Cache engine plugin, by name (`lmcache plugins list` shows the installed engines "
            "and what each does). An engine may support only some --supported-transfer-mode "
            "values; any other is refused at start-up."
        ),
    )
    supported_transfer_mode: TransferMode = Field(
        default="auto",
        description=(
            "Which worker -> server transfer paths the server loads: lmcache_driven "
            "(STORE/RETRIEVE), engine_driven (PREPARE/COMMIT) or auto (both)."
        ),
    )
    runtime_plugin_locations: Annotated[
        list[str], NoDecode, CliMeta(variadic=True, metavar="PATH...")
    ] = Field(
        default_factory=list,
        description=(
            "Zero or more runtime plugin scripts or directories to launch alongside the server; "
            "each receives the server config in LMCACHE_RUNTIME_PLUGIN_CONFIG."
        ),
    )
    runtime_plugin_config: Annotated[dict[str, Any], NoDecode, CliMeta(metavar="JSON")] = Field(
        default_factory=dict,
        description=(
            "JSON object of extra configuration forwarded to runtime plugins in "
            "LMCACHE_RUNTIME_PLUGIN_EXTRA_CONFIG."
        ),
    )
    script_allowed_imports: Annotated[
        list[str], NoDecode, CliMeta(variadic=True, metavar="MODULE...")
    ] = Field(
        default_factory=list,
        description=(
            "Space-separated Python module names that scripts posted to /run_script may import."
        ),
    )
    shm_name: Annotated[str | None, CliMeta(default_text="not set: auto-allocate")] = Field(
        default=None,
        description=(
            "Shared-memory pool of L1 for the non-GPU transfer path. Not set: auto-allocate "
            '/dev/shm/lmcache_l1_pool_<uuid>; "" (empty): no shared pool, engine-driven bytes '
            "travel inline in the request (never pickled); NAME: the segment "
            "/dev/shm/lmcache_l1_pool_NAME (the prefix is added when missing)."
        ),
    )
    session_ttl_seconds: float = Field(
        default=600.0,
        gt=0,
        description=(
            "Idle seconds after which a request's session (its hashes, lookup result and "
            "unconsumed read locks) is ended. Not in the reference table; upstream's flag, but "
            "measured from the last activity instead of creation."
        ),
    )
    request_deadline_seconds: float = Field(
        default=8.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description=(
            "Longest a request's server-side work may take, counted from its arrival (queue "
            "time included): every wait of a request (a concurrent store's chunks, an L2 "
            "prefetch, a queued transfer) gives up at it, and a store or retrieve that cannot "
            "finish in time answers ok=False without touching the worker's blocks afterwards. "
            "Keep it below the clients' timeouts (upstream's ping 10 s, this project's client "
            "30 s). Not in the reference table (see docs/operations.md)."
        ),
    )
    enable_segmented_prefix: bool = Field(
        default=False,
        description=(
            "CacheBlend only: on a mid-prefix L2 retrieve failure keep the gapped prefix so only "
            "the gap is recomputed. No effect for other engines."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _inherit_pool_sizes(cls, data: Any) -> Any:
        if isinstance(data, dict):
            base = data.get("max_workers", 1)
            for name in ("max_gpu_workers", "max_cpu_workers"):
                if data.get(name) is None:
                    data[name] = base
        return data

    @field_validator("runtime_plugin_locations", "script_allowed_imports", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return parse_word_list(value)

    @field_validator("runtime_plugin_config", mode="before")
    @classmethod
    def _parse_plugin_config(cls, value: Any) -> Any:
        return parse_json_object(value, "the runtime plugin config")

    @field_validator("script_allowed_imports")
    @classmethod
    def _check_module_names(cls, value: list[str]) -> list[str]:
        for name in value:
            parts = name.split(".")
            if not all(part.isidentifier() and not keyword.iskeyword(part) for part in parts):
                raise ValueError(f"{name!r} is not a Python module name")
        return value
