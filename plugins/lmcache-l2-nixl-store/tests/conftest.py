"""A real S3-protocol server for the OBJ tests: moto's, from :mod:`lmcache_core.testing.moto_s3`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lmcache_core.testing.moto_s3 import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    MotoS3Server,
    running_moto_s3,
)


class MotoS3(MotoS3Server):
    """moto's S3 server, which also writes NIXL OBJ ``backend_params`` for its buckets."""

    def obj_params(self, bucket: str) -> dict[str, str]:
        """NIXL OBJ ``backend_params`` for ``bucket`` on this server (path-style, plain HTTP)."""
        return {
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "bucket": bucket,
            "endpoint_override": self.url,
            "scheme": "http",
            "region": REGION,
            "use_virtual_addressing": "false",
            "req_checksum": "supported",
        }


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One moto server for the session; tests isolate themselves with buckets of their own."""
    yield from running_moto_s3(MotoS3())


@pytest.fixture
def own_moto_s3() -> Iterator[MotoS3]:
    """A moto server of this test's own, which it may stop and start again."""
    yield from running_moto_s3(MotoS3())
