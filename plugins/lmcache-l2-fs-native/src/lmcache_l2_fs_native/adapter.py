"""``FsNativeL2Adapter``: the ``fs_native`` L2 adapter, a :class:`FsNativeClient` behind the bridge.

The bridge (:class:`~lmcache_l2_native_plugin.native_bridge.NativeClientAdapter`)
sends every public call to the client as one batch and resolves it when the
client's eventfd signals, exactly as upstream's ``fs_native`` drives its C++
client. On top of it this adapter adds what a file-backed adapter owes its disk:
the ``high_watermark`` / ``min_free_bytes`` limits, measured on the live file
system at every store admission (:mod:`lmcache_core.storage.l2.disk_limits`),
with stores in flight counted in whole file-system blocks.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from lmcache_l2_native_plugin.native_bridge import NativeClientAdapter

from lmcache_core.storage.l2.adapter import ObjectFormat
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_core.storage.l2.disk_limits import NO_DISK_LIMITS, DiskLimits
from lmcache_l2_fs_native.client import FsNativeClient
from lmcache_l2_fs_native.config import FSNativeAdapterConfig

logger = logging.getLogger("lmcache.l2.fs_native")

GIB = 1 << 30
SHARED_TMP_GRACE_S = 3600.0
"""On a shared directory, only temporary files older than this are deleted at start."""


class FsNativeL2Adapter(NativeClientAdapter):
    """One file per key under the client's ``base_path``, with disk limits.

    Args:
        client: The file-system client (it owns the directory and the I/O threads).
        capacity_bytes: Capacity reported and enforced (0: unlimited).
        object_format: ``framed`` or ``raw`` (upstream's bytes).
        persist: False deletes the files this adapter indexes when it closes.
        disk_limits: The file system's watermark and minimum free space.
    """

    def __init__(
        self,
        client: FsNativeClient,
        *,
        capacity_bytes: int = 0,
        object_format: ObjectFormat = "framed",
        persist: bool = True,
        disk_limits: DiskLimits = NO_DISK_LIMITS,
    ) -> None:
        super().__init__(
            client,
            label="lmcache_l2_fs_native.FsNativeClient",
            name="fs_native",
            capacity_bytes=capacity_bytes,
            object_format=object_format,
            persist=persist,
        )
        self.client = client
        self.disk_limits = disk_limits
        self.room_unit = os.statvfs(client.base_path).f_frsize  # files take whole blocks
        if disk_limits.room(client.base_path) == 0:
            logger.warning(
                "fs_native: %s is at its disk limits already (%s); stores are refused until "
                "space is freed",
                client.base_path,
                disk_limits,
            )

    def _room_bytes(self) -> int | None:
        return self.disk_limits.room(self.client.base_path)

    def status(self) -> dict[str, Any]:
        """The bridge's status plus the directory, the limits and the I/O paths taken."""
        status = super().status()
        client = self.client
        status.update(
            base_path=str(client.base_path),
            high_watermark=self.disk_limits.high_watermark,
            min_free_bytes=self.disk_limits.min_free_bytes,
            use_odirect=client.use_odirect,
            odirect_ops=client.odirect_ops,
            bounced_odirect_ops=client.bounced_ops,
            buffered_ops=client.buffered_ops,
            failed_keys=client.failed_keys,
        )
        if client.last_error:
            status["last_key_error"] = client.last_error
        return status


def build_fs_native(
    config: FSNativeAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> FsNativeL2Adapter:
    """Build the ``fs_native`` adapter from its validated ``--l2-adapter`` JSON.

    Args:
        config: The adapter's configuration.
        context: The adapter context (unused: completions come on the eventfd, so the
            periodic-notifier interval does not apply).
    """
    del context
    if config.max_capacity_gb and config.eviction is None:
        logger.warning(
            "fs_native: max_capacity_gb is set without an eviction block: stores are refused "
            "once it is full, nothing is evicted"
        )
    client = FsNativeClient(
        config.base_path,
        num_workers=config.num_workers,
        relative_tmp_dir=config.relative_tmp_dir,
        use_odirect=config.use_odirect,
        read_ahead_size=config.read_ahead_size,
        stale_tmp_age_s=SHARED_TMP_GRACE_S if config.shared else 0.0,
    )
    return FsNativeL2Adapter(
        client,
        capacity_bytes=int(config.max_capacity_gb * GIB),
        object_format=config.format,
        persist=config.persist_enabled,
        disk_limits=config.disk_limits(),
    )
