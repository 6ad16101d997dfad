"""A real S3-protocol server for the OBJ tests: moto's, in a subprocess on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lmcache_l2_nixl_store.testing import NixlObjMotoS3

from lmcache_core.testing.moto_s3 import running_moto_s3


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[NixlObjMotoS3]:
    """One moto server for the session; tests isolate themselves with buckets of their own."""
    yield from running_moto_s3(NixlObjMotoS3())


@pytest.fixture
def own_moto_s3() -> Iterator[NixlObjMotoS3]:
    """A moto server of this test's own, which it may stop and start again."""
    yield from running_moto_s3(NixlObjMotoS3())
