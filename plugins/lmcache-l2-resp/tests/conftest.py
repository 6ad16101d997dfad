"""Fixtures running real ``redis-server`` processes for the ``resp`` adapter's tests.

Each server is stopped when its fixture ends; where ``redis-server`` is not
installed, the tests that use one skip with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lmcache_l2_resp.testing import (
    ACL_PASSWORD,
    ACL_USER,
    PASSWORD,
    REDIS_SERVER,
    SKIP_REASON,
    RedisServer,
)


def _serve(workdir: Path, *args: str, password: str | None = None) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer(workdir, *args)
    server.password = password  # the fixture's own client (start, flush) authenticates
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A plain ``redis-server`` shared by a module's tests (flush it where it matters)."""
    yield from _serve(tmp_path_factory.mktemp("redis"))


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of this test alone (to kill, pause or restart)."""
    yield from _serve(tmp_path / "redis")


@pytest.fixture(scope="module")
def auth_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` that requires AUTH: ``requirepass`` and the ACL user ``lmcache``."""
    user = [ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all"]
    yield from _serve(
        tmp_path_factory.mktemp("redis-auth"),
        "--requirepass",
        PASSWORD,
        "--user",
        *user,
        password=PASSWORD,
    )
