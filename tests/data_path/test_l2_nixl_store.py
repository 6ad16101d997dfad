"""``nixl_store`` behind a real server: chunks stored through L1 come back from the NIXL pool.

The server registers its L1 arena with NIXL once (as upstream does); L1 is cleared
between store and load, so every hit is a NIXL ``READ`` from the pool files.
Skipped where NIXL is not installed.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from lmcache_l2_nixl_store.testing import NIXL_API, NIXL_MISSING

from tests.data_path.l2_helpers import CHUNK, l2_round_trip, l2_status, server_args, small_layout
from tests.server_process import free_port, running_server

pytest.importorskip(NIXL_API, reason=NIXL_MISSING)

LAYOUT = small_layout(160)


@pytest.mark.slow  # a real server process
@pytest.mark.parametrize("direct", ["false", "true"], ids=["buffered", "odirect"])
def test_chunks_come_back_from_the_nixl_pool(tmp_path: Path, direct: str) -> None:
    pool = tmp_path / "pool"
    adapter = {
        "type": "nixl_store",
        "backend": "POSIX",
        "backend_params": {
            "file_path": str(pool),
            "use_direct_io": direct,
            "file_size": str(64 * 4096),
        },
        "pool_size": 8,
    }
    tokens = [random.Random(9).randrange(50000) for _ in range(3 * CHUNK + 5)]
    port = free_port()
    with running_server(*server_args(port, adapter)) as (_, url):
        status = l2_status(url)["adapters"][0]
        assert (status["type"], status["backend"], status["pool_pages"]) == (
            "nixl_store",
            "POSIX",
            8 * 64,
        )
        assert status["capacity_bytes"] == 8 * 64 * 4096
        hits, same = l2_round_trip(port, url, LAYOUT, tokens, store=True)
        assert (hits, same) == (3, True)
        status = l2_status(url)["adapters"][0]
        assert status["objects"] == 3 and status["errors"] == 0
        assert len(list(pool.iterdir())) == 8
    assert list(pool.iterdir()) == []  # the pool goes with the server (RAM index)
