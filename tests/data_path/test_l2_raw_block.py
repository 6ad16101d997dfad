"""The ``raw_block`` L2 adapter behind a real server: stored chunks survive a server restart."""

from __future__ import annotations

import random
from pathlib import Path

from tests.data_path.l2_helpers import CHUNK, l2_round_trip, l2_status, server_args, small_layout
from tests.server_process import free_port, running_server

LAYOUT = small_layout(160)
ALIGN = 4096


def test_raw_block_serves_the_same_bytes_after_a_restart(tmp_path: Path) -> None:
    device = tmp_path / "raw_block.img"
    object_bytes = LAYOUT.object_nbytes(CHUNK)
    slot_bytes = ALIGN + -(-object_bytes // ALIGN) * ALIGN  # header block + one chunk
    meta = 64 * ALIGN
    adapter = {
        "type": "raw_block",
        "device_path": str(device),
        "slot_bytes": slot_bytes,
        "meta_total_bytes": meta,
        "capacity_bytes": meta + 16 * slot_bytes,  # the file is created at this size
    }
    tokens = [random.Random(8).randrange(50000) for _ in range(3 * CHUNK + 5)]
    port = free_port()
    args = server_args(port, adapter)
    with running_server(*args) as (_, url):
        status = l2_status(url)["adapters"][0]
        assert (status["type"], status["total_slots"], status["objects"]) == ("raw_block", 16, 0)
        assert status["use_odirect"] is True
        assert l2_round_trip(port, url, LAYOUT, tokens, store=True) == (3, True)
    assert device.stat().st_size == meta + 16 * slot_bytes

    with running_server(*args) as (_, url):  # a new process: the index comes from the device
        status = l2_status(url)["adapters"][0]
        assert status["objects"] == 3 and status["recovered_objects"] == 3
        assert status["free_slots"] == 13
        assert status["used_bytes"] == 3 * (object_bytes + 48)
        assert l2_round_trip(port, url, LAYOUT, tokens, store=False) == (3, True)
