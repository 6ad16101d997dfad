"""The L2 adapter conformance suite on a real Mooncake cluster (master + store node)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lmcache_l2_mooncake_store.adapter import MooncakeStoreAdapter
from lmcache_l2_mooncake_store.config import MooncakeStoreAdapterConfig
from lmcache_l2_mooncake_store.testing import MooncakeCluster, needs_mooncake

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.key_names import native_key_name
from lmcache_core.testing.l2_conformance import L2AdapterConformance


@needs_mooncake
class TestMooncakeStoreConformance(L2AdapterConformance):
    """Pure clients of one store node; ``persist_enabled: false`` removes a test's keys at close.

    The suite reuses key names across tests, and the cluster outlives each test, so
    every adapter removes what it stored when it closes (upstream's meaning of
    ``persist_enabled``). Objects live in the cluster, not in the adapter's
    process, but the adapter cannot list them, so the restart test skips.
    """

    cluster: MooncakeCluster

    @pytest.fixture(autouse=True)
    def _cluster(self, mooncake_cluster: MooncakeCluster) -> None:
        self.cluster = mooncake_cluster

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        config = MooncakeStoreAdapterConfig.model_validate(
            self.cluster.adapter_config(persist_enabled=False, format=object_format)
        )
        return MooncakeStoreAdapter(config, capacity_bytes=capacity_bytes)

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        assert isinstance(adapter, MooncakeStoreAdapter)
        # The library's own client, behind the adapter: read, flip the last byte, re-put.
        store = adapter._store
        name = native_key_name(key)
        data = np.empty(store.get_size(name), dtype=np.uint8)
        assert store.batch_get_into([name], [data.ctypes.data], [data.nbytes]) == [data.nbytes]
        data[-1] ^= 0xFF
        assert store.remove(name, True) == 0
        assert store.batch_put_from([name], [data.ctypes.data], [data.nbytes]) == [0]
        return True
