"""Fields common to every ``--l2-adapter`` JSON object.

Each adapter plugin subclasses :class:`L2AdapterConfigBase` with its own fields;
the core validates every ``--l2-adapter`` JSON against the model of the plugin its
``type`` names. Unknown fields are rejected (``extra="forbid"``) so a typo fails at
start-up with the field named instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_AFFINITY_TAG = "_default"


class L2EvictionConfig(BaseModel):
    """The ``eviction`` block of an adapter: how its capacity is enforced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eviction_policy: str = Field(
        default="LRU", description="Eviction policy plugin name (for example LRU, IsolatedLRU)."
    )
    trigger_watermark: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Usage ratio of the capacity that triggers eviction.",
    )
    eviction_ratio: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Fraction of the capacity to free when triggered."
    )


class L2AdapterConfigBase(BaseModel):
    """Base model of an L2 adapter's JSON configuration.

    Attributes:
        type: The adapter type; selects the plugin.
        affinity_tag: The L1 this adapter is bound to (only the default L1 exists).
        shared: The storage is shared by a fleet of servers; capacity is not summed.
        persist_enabled: Keep the stored objects when the adapter closes.
        eviction: Optional eviction block enforcing the adapter's capacity.
        serde: Optional data transform (compression, encryption) around store/load.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="Adapter type, as registered by its plugin.")
    affinity_tag: str = Field(
        default=DEFAULT_AFFINITY_TAG, description="Tag of the L1 this adapter reads and writes."
    )
    shared: bool = Field(
        default=False,
        description="The storage is shared by several servers; its capacity is not summed.",
    )
    persist_enabled: bool = Field(
        default=True, description="Keep stored objects when the adapter closes."
    )
    eviction: L2EvictionConfig | None = Field(
        default=None, description="Eviction settings for this adapter's capacity."
    )
    format: Literal["framed", "raw"] = Field(
        default="framed",
        description=(
            "framed: each object carries a header (magic, version, key digest, length, "
            "checksum) so a torn or corrupt object is a miss; raw: bare bytes under upstream's "
            "key names, byte-compatible with stores written by upstream LMCache."
        ),
    )
    serde: dict[str, Any] | None = Field(
        default=None,
        description='Data transform around store and load, e.g. {"type": "aesgcm", ...}.',
    )

    @field_validator("affinity_tag")
    @classmethod
    def _only_default_l1(cls, value: str) -> str:
        # There is one L1 per server (no --l1-manager); binding elsewhere cannot work.
        if value != DEFAULT_AFFINITY_TAG:
            raise ValueError(
                f"only the default L1 ({DEFAULT_AFFINITY_TAG!r}) exists; got {value!r}"
            )
        return value
