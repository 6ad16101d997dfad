"""Registers the L2 adapter ``s3`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_s3.config import S3AdapterConfig

if TYPE_CHECKING:
    from lmcache_core.storage.l2.adapter import L2AdapterV1


def _build(
    config: S3AdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> L2AdapterV1:
    # Imported on use: registering the plugin does not import boto3.
    from lmcache_l2_s3.adapter import build_s3

    return build_s3(config, context)


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec[S3AdapterConfig]]:
    """Register the L2 adapter ``s3``.

    Returns:
        Its one spec.
    """
    return [
        L2AdapterSpec(
            name="s3",
            factory=_build,
            config_model=S3AdapterConfig,
            description="One object per key in an S3 bucket.",
        )
    ]
