"""The lookup-hash log in a real server: files appear with one line per lookup."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from lmcache_core.hashing import chunk_hashes, make_hasher
from tests.data_path.kv import CHUNK
from tests.observability.request_flow import obs_server, run_request

# Starts real servers (seconds each): outside the quick loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def test_lookups_are_logged_with_the_servers_chunk_hashes(tmp_path: Path) -> None:
    directory = tmp_path / "hashes"
    with obs_server(
        "--lookup-hash-log-dir",
        str(directory),
        "--hash-algorithm",
        "sha256_cbor",
        "--lookup-hash-log-rotation-max-size",
        "1",  # every line in its own file ...
        "--lookup-hash-log-max-files",
        "2",  # ... and only the last two kept
    ) as server:
        status = httpx.get(f"{server.http_url}/status").json()
        assert "lookup_hash_log" in status["event_bus"]["subscribers"]
        flows = [run_request(server.zmq_url, chunks=n) for n in (1, 2, 3)]
    files = sorted(directory.iterdir())
    assert len(files) == 2, [p.name for p in files]
    records = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    # Only lookups write lines (stores do not): the last two requests' lookups remain.
    assert [r["request_id"] for r in records] == [f.request for f in flows[1:]]
    hasher = make_hasher("sha256_cbor")
    for record, flow in zip(records, flows[1:], strict=True):
        assert set(record) == {
            "timestamp",
            "request_id",
            "model_name",
            "chunk_size",
            "seq_len",
            "chunk_hashes",
            # The lookup's result and miss explanation (keys upstream does not write).
            "hit_tokens",
            "hit_chunks_by_tier",
            "first_miss",
            "miss_chunks_by_cause",
        }
        # The flow stored every chunk before looking it up: a full L1 hit, nothing missed.
        assert record["hit_tokens"] == len(flow.tokens)
        assert record["hit_chunks_by_tier"] == {"l1": float(len(flow.tokens) // CHUNK)}
        assert record["first_miss"] is None and record["miss_chunks_by_cause"] == {}
        assert record["model_name"] == "model"
        assert record["chunk_size"] == CHUNK
        assert record["seq_len"] == len(flow.tokens)
        expected = chunk_hashes(hasher, flow.tokens, CHUNK)
        assert record["chunk_hashes"] == ["0x" + h.hex() for h in expected]
        assert isinstance(record["timestamp"], float)


def test_without_a_directory_nothing_is_subscribed() -> None:
    with obs_server() as server:
        status = httpx.get(f"{server.http_url}/status").json()
        assert "lookup_hash_log" not in status["event_bus"]["subscribers"]


def test_an_unusable_directory_stops_start_up(tmp_path: Path) -> None:
    from tests.server_process import clean_env, free_port, start_server

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    process = start_server(
        "--l1-size-gb",
        "0.1",
        "--eviction-policy",
        "LRU",
        "--http-port",
        str(free_port()),
        "--port",
        str(free_port()),
        "--lookup-hash-log-dir",
        str(blocker / "sub"),
        env=clean_env(),
    )
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, output
    assert "--lookup-hash-log-dir" in output.strip().splitlines()[-1], output
