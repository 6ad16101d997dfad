"""Fixtures on a real S3-protocol server: moto's, from :mod:`lmcache_core.testing.moto_s3`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lmcache_core.testing.moto_s3 import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    MotoS3Server,
    running_moto_s3,
)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoS3Server]:
    """One server for the session; tests isolate themselves with their own buckets."""
    yield from running_moto_s3(MotoS3Server())


@pytest.fixture
def own_moto_server() -> Iterator[MotoS3Server]:
    """A server of this test's own, which it may stop and restart."""
    yield from running_moto_s3(MotoS3Server())


@pytest.fixture
def bucket(moto_server: MotoS3Server) -> str:
    """A fresh bucket on the session's server."""
    return moto_server.make_bucket()


@pytest.fixture
def s3_client(moto_server: MotoS3Server) -> Any:
    """A plain boto3 client on the session's server."""
    return moto_server.client()


@pytest.fixture
def adapter_kwargs() -> Callable[..., dict[str, Any]]:
    """Constructor arguments of a test adapter: static keys, short timeouts, few retries."""

    def make(**overrides: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "region": REGION,
            "disable_tls": True,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "num_io_threads": 8,
            "connect_timeout_s": 2.0,
            "read_timeout_s": 10.0,
            "max_attempts": 2,
        }
        kwargs.update(overrides)
        return kwargs

    return make
