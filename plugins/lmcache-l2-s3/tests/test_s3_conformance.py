"""The L2 adapter conformance suite, run against ``S3L2Adapter`` on a real S3-protocol server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_s3.adapter import S3L2Adapter

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.testing.l2_conformance import L2AdapterConformance


class TestS3Conformance(L2AdapterConformance):
    """Framed and raw objects in a fresh bucket of a moto server, per adapter."""

    @pytest.fixture(autouse=True)
    def _server(self, moto_server: Any, adapter_kwargs: Any) -> None:
        self.server = moto_server
        self.kwargs = adapter_kwargs

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        bucket = self.server.make_bucket()
        return S3L2Adapter(
            f"s3://{bucket}.{self.server.host}",
            capacity_bytes=capacity_bytes,
            object_format=object_format,
            **self.kwargs(),
        )

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        assert isinstance(adapter, S3L2Adapter)
        client = self.server.client()
        name = adapter.name_of(key)
        data = bytearray(client.get_object(Bucket=adapter.bucket, Key=name)["Body"].read())
        data[-1] ^= 0xFF
        client.put_object(Bucket=adapter.bucket, Key=name, Body=bytes(data))
        return True

    def reopen(self, adapter: L2AdapterV1, tmp_path: Path) -> L2AdapterV1 | None:
        assert isinstance(adapter, S3L2Adapter)
        # Not started: the suite calls start(), which lists the bucket to rebuild the index.
        return S3L2Adapter(
            f"{adapter.bucket}.{self.server.host}",
            capacity_bytes=adapter.capacity_bytes,
            object_format=adapter.object_format,
            **self.kwargs(),
        )
