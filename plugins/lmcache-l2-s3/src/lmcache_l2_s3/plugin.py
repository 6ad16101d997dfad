"""Registers the L2 adapter ``s3`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl, pending_factory
from lmcache_l2_s3.config import S3AdapterConfig

REASON = "lands with the L2 issue (#4)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``s3``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        L2AdapterSpec(
            name="s3",
            factory=pending_factory("L2 adapter 's3'", REASON),
            config_model=S3AdapterConfig,
            description="One object per key in an S3 bucket.",
            not_implemented=REASON,
        )
    ]
