"""The blend engine's own flags (upstream 0.5.6's extra blend flags, in the MP Server panel).

Only this module is imported to compose the server's flags; torch and the engine
load when the engine is built.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from lmcache_core.config.plugin_settings import PluginSettings


class BlendEngineSettings(PluginSettings):
    """CacheBlend options of ``--engine-type blend``."""

    group: ClassVar[str] = "mp"
    after: ClassVar[str] = "enable_segmented_prefix"  # upstream lists them together

    enable_dedup_content: bool = Field(
        default=False,
        description=(
            "CacheBlend only: index the content fingerprint of a chunk once per text (per "
            "model, world size and cache salt), even when it was stored behind several "
            "different prefixes."
        ),
    )
    enable_blend_reorder: bool = Field(
        default=False,
        description=(
            "CacheBlend only: record stored prompts (in memory, at most 2**24 tokens) so "
            "cb_reorder_plan can propose a reordered prompt that starts with a cached one."
        ),
    )
