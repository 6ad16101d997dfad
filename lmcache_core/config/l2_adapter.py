"""Fields common to every ``--l2-adapter`` JSON object.

Each adapter plugin subclasses :class:`L2AdapterConfigBase` with its own fields;
the core validates every ``--l2-adapter`` JSON against the model of the plugin its
``type`` names. Unknown fields are rejected (``extra="forbid"``) so a typo fails at
start-up with the field named instead of being silently ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class L2EvictionConfig(BaseModel):
    """The ``eviction`` block of an adapter: how its capacity is enforced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eviction_policy: str = Field(
        default="LRU", description="Eviction policy plugin name (for example LRU, IsolatedLRU)."
    )
    trigger_watermark: float = Field(
        default=0.8, ge=0.0, le=1.0, description="Usage ratio of the capacity that triggers eviction."
    )
    eviction_ratio: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Fraction of the capacity to free when triggered."
    )


class L2AdapterConfigBase(BaseModel):
    """Base model of an L2 adapter's JSON configuration.

    Attributes:
        type: The adapter type; selects the plugin.
        eviction: Optional eviction block enforcing the adapter's capacity.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="Adapter type, as registered by its plugin.")
    eviction: L2EvictionConfig | None = Field(
        default=None, description="Eviction settings for this adapter's capacity."
    )
