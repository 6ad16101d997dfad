"""lmcache-store-policy-frequency: the L2 store policy ``frequency`` (admission by count)."""

from __future__ import annotations

__version__ = "0.1.0"
