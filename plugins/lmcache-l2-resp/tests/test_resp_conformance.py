"""The L2 adapter conformance suite, run against ``RespL2Adapter`` on a real ``redis-server``."""

from __future__ import annotations

from pathlib import Path

import pytest
from lmcache_l2_resp.adapter import RespL2Adapter
from lmcache_l2_resp.testing import RedisServer, needs_redis

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.key_names import native_key_name
from lmcache_core.testing.l2_conformance import L2AdapterConformance


@needs_redis
class TestRespConformance(L2AdapterConformance):
    """Framed and raw objects on one server, flushed before each test."""

    server: RedisServer

    @pytest.fixture(autouse=True)
    def _empty_server(self, redis_server: RedisServer) -> None:
        redis_server.flush()
        self.server = redis_server

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        return RespL2Adapter(
            self.server.host,
            self.server.port,
            capacity_bytes=capacity_bytes,
            object_format=object_format,
        )

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        name = native_key_name(key)
        with self.server.client() as client:
            length = client.strlen(name)
            last = client.getrange(name, length - 1, length - 1)
            client.setrange(name, length - 1, bytes([last[0] ^ 0xFF]))
        return True

    def reopen(self, adapter: L2AdapterV1, tmp_path: Path) -> L2AdapterV1 | None:
        assert isinstance(adapter, RespL2Adapter)
        # Not started: the suite calls start(), which rebuilds the index with SCAN.
        return RespL2Adapter(
            adapter.host,
            adapter.port,
            capacity_bytes=adapter.capacity_bytes,
            object_format=adapter.object_format,
        )
