"""The reference RoPE of the blend tests (now in :mod:`lmcache_core.testing.rope_reference`)."""

from __future__ import annotations

from lmcache_core.testing.rope_reference import apply_rope, cos_sin_cache

__all__ = ["apply_rope", "cos_sin_cache"]
