"""Fixtures running a real Mooncake cluster (master + a standalone store node) on loopback.

Each cluster is stopped by PID when its fixture ends; without the library the
tests that use one skip with the install command.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lmcache_l2_mooncake_store.testing import SKIP_REASON, MooncakeCluster, mooncake_installed


@pytest.fixture(scope="module")
def mooncake_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MooncakeCluster]:
    """A master and one 256 MiB store node shared by a module's tests."""
    if not mooncake_installed():
        pytest.skip(SKIP_REASON)
    with MooncakeCluster(tmp_path_factory.mktemp("mooncake")) as cluster:
        cluster.add_store_node()
        yield cluster


@pytest.fixture
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MooncakeCluster]:
    """A master of this test alone (no store node), for tests that kill things."""
    if not mooncake_installed():
        pytest.skip(SKIP_REASON)
    with MooncakeCluster(tmp_path_factory.mktemp("mooncake-own")) as cluster:
        yield cluster
