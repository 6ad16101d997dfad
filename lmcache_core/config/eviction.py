"""The Eviction Policy flag group."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from lmcache_core.config.base import CliMeta, GroupSettings


class EvictionConfig(GroupSettings):
    """Which eviction policy plugin runs, and when and how much it evicts."""

    panel: ClassVar[str] = "Eviction Policy"
    source: ClassVar[str] = "lmcache/v1/distributed/config.py"
    summary: ClassVar[str] = "L1 eviction: the policy plugin, its trigger and its ratio."

    eviction_policy: Annotated[str, CliMeta(metavar="POLICY", default_text="required")] = Field(
        min_length=1,
        description=(
            "Eviction policy plugin: LRU, IsolatedLRU or noop (or any installed one). noop makes "
            "L1 a pure write buffer; IsolatedLRU keeps one LRU per cache_salt with quotas set "
            "through the /quota endpoints (a salt without a quota has a limit of 0 bytes)."
        ),
    )
    eviction_trigger_watermark: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Memory usage ratio (0.0-1.0) that triggers eviction.",
    )
    eviction_ratio: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="Fraction of allocated memory to evict when triggered (0.0-1.0).",
    )
    quota_state_file: Annotated[str | None, CliMeta(metavar="PATH", default_text="not set")] = (
        Field(
            default=None,
            min_length=1,
            description=(
                "JSON file the per-cache_salt quota table is saved to after every change and "
                "restored from at start-up, so a restart never makes IsolatedLRU evict a "
                "tenant's data for want of its quota. Its directory must exist; an unreadable "
                "or invalid file stops start-up. Not set: quotas live in memory only. Not in "
                "the reference: upstream's quotas are lost on restart."
            ),
        )
    )
