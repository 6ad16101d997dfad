"""Configuration of the ``mooncake_store`` L2 adapter (a Mooncake distributed store)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from lmcache_core.config.l2_adapter import L2AdapterConfigBase

MooncakeOp = Literal["lookup", "retrieve", "store", "delete"]
"""The operations that can get their own worker count."""


class MooncakeStoreAdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "mooncake_store", ...}``.

    Unlike the other adapters, unknown keys are allowed: every key other than
    ``type``, ``eviction``, ``num_workers`` and ``per_op_workers`` is passed
    verbatim to Mooncake's set-up (``local_hostname``, ``metadata_server``,
    ``master_server_address``, ``protocol``, ``device_name``,
    ``global_segment_size``, ...).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    num_workers: int = Field(default=4, gt=0, description="Worker threads for all operations.")
    per_op_workers: dict[MooncakeOp, Annotated[int, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Worker threads per operation (lookup, retrieve, store, delete).",
    )

    def mooncake_setup(self) -> dict[str, Any]:
        """The keys passed verbatim to Mooncake's set-up."""
        return dict(self.model_extra or {})
