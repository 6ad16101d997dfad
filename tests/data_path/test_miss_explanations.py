"""Why did this lookup miss? On a real server, with a real client, a real fs L2 tier.

One server (a 4 MiB LRU L1 and an ``fs`` adapter bounded to about 20 objects
with an LRU eviction block) serves every test here; each test uses its own
tokens. The flood that evicts from both tiers runs last. Each lookup's
explanation is read back through ``GET /lookups/{request_id}``, ``lmcache
explain`` (both forms, in this process) and the ``lmcache_mp_lookup_miss_chunks_total`` counter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.storage.l2.object_format import HEADER_SIZE
from tests.data_path.l2_helpers import (
    CHUNK,
    blocks,
    fill_layers,
    random_tokens,
    small_layout,
    wait_for,
)
from tests.helpers import invoke
from tests.server_process import LiveServer, server_on_free_ports

pytestmark = pytest.mark.slow

LAYOUT = small_layout(160)
OBJECT_BYTES = LAYOUT.object_nbytes(CHUNK)
L2_OBJECTS = 20


class Session:
    """The server, one registered CPU worker and its client, and the fs directory."""

    def __init__(self, server: LiveServer, directory: Path) -> None:
        self.server = server
        self.url = server.http_url
        self.directory = directory
        self.client = MPClient(server.zmq_url, timeout=20)
        self.worker = CpuKVWorker(self.client, LAYOUT)
        self.worker.register()
        fill_layers(self.worker, 1)

    def store(self, tokens: list[int], request: str, *, salt: str = "") -> None:
        chunks = len(tokens) // CHUNK
        key = self.worker.key(tokens, 0, chunks * CHUNK, request, cache_salt=salt)
        assert self.worker.store(key, blocks(1, chunks))

    def lookup(self, tokens: list[int], request: str, *, salt: str = "") -> int:
        key = self.worker.key(tokens, 0, len(tokens), request, worker=False, cache_salt=salt)
        self.client.lookup(key)
        hits = self.client.wait_prefetch_status(request, 10.0)
        assert hits is not None, "the lookup did not finish in time"
        self.client.end_session(request)
        return int(hits)

    def explanation(self, request: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/lookups/{request}", timeout=5)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def close(self) -> None:
        self.worker.unregister()
        self.worker.close()
        self.client.close()


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    directory = tmp_path_factory.mktemp("fs-l2")
    capacity_gb = L2_OBJECTS * (OBJECT_BYTES + HEADER_SIZE) / (1 << 30)
    adapter = {
        "type": "fs",
        "base_path": str(directory),
        "max_capacity_gb": capacity_gb,
        "eviction": {"eviction_policy": "LRU", "trigger_watermark": 0.8, "eviction_ratio": 0.3},
    }
    args = ("--l1-size-gb", "0.004", "--eviction-policy", "LRU", "--chunk-size", str(CHUNK))
    with server_on_free_ports(*args, "--l2-adapter", json.dumps(adapter)) as server:
        live = Session(server, directory)
        try:
            yield live
        finally:
            live.close()


def test_a_full_hit_with_a_partial_tail(session: Session) -> None:
    tokens = random_tokens(1, 3)
    session.store(tokens, "store-1")
    assert session.lookup([*tokens, *range(100)], "full") == 3
    body = session.explanation("full")
    assert body["requested_tokens"] == 3 * CHUNK + 100 and body["requested_chunks"] == 3
    assert body["hit_chunks"] == 3 and body["hit_tokens"] == 3 * CHUNK
    assert body["hit_chunks_by_tier"] == {"l1": 3.0}
    assert body["first_miss"]["cause"] == "partial_chunk" and body["first_miss"]["chunk"] == 3
    assert body["miss_chunks_by_cause"] == {"partial_chunk": 1}
    assert "never cacheable" in body["first_miss_description"]


def test_another_salt_and_never_stored(session: Session) -> None:
    tokens = random_tokens(2, 2)
    session.store(tokens, "store-2", salt="tenant-a")
    assert session.lookup(tokens, "salted", salt="tenant-b") == 0
    body = session.explanation("salted")
    assert body["cache_salt"] == "tenant-b"
    assert body["first_miss"] == {
        "chunk": 0,
        "cause": "other_cache_salt",
        "tier": None,
        "policy": None,
        "reason": None,
        "removed_at": None,
    }
    assert body["miss_chunks_by_cause"] == {"other_cache_salt": 2}
    assert session.lookup(random_tokens(3, 2), "cold") == 0
    assert session.explanation("cold")["miss_chunks_by_cause"] == {"never_stored": 2}


def test_an_l2_hit_is_counted_for_its_adapter(session: Session) -> None:
    tokens = random_tokens(4, 2)
    before = set(session.directory.glob("*.data"))
    session.store(tokens, "store-4")
    # This store's own two files (the directory holds earlier tests' objects too), so
    # the clear below does not race the L2 store, which pins the chunks it writes.
    wait_for(lambda: len(set(session.directory.glob("*.data")) - before) == 2)
    session.client.clear(False)  # L1 forgets; the fs tier still holds both chunks
    assert session.lookup(tokens, "from-l2") == 2
    body = session.explanation("from-l2")
    assert body["hit_chunks_by_tier"] == {"l1": 0.0, "l2[1]:fs": 2.0}
    assert body["first_miss"] is None


def test_a_corrupt_l2_object(session: Session) -> None:
    tokens = random_tokens(5, 1)
    before = set(session.directory.glob("*.data"))
    session.store(tokens, "store-5")
    wait_for(lambda: len(set(session.directory.glob("*.data")) - before) == 1)
    (path,) = set(session.directory.glob("*.data")) - before
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 7] ^= 0x01
    path.write_bytes(bytes(data))
    session.client.clear(False)
    assert session.lookup(tokens, "corrupt") == 0
    body = session.explanation("corrupt")
    assert body["first_miss"]["cause"] == "l2_corrupt"


def test_unknown_ids_are_404_and_the_listing_is_bounded(session: Session) -> None:
    response = httpx.get(f"{session.url}/lookups/never-seen", timeout=5)
    assert response.status_code == 404
    assert "never-seen" in response.json()["detail"]
    listing = httpx.get(f"{session.url}/lookups", params={"limit": 2}, timeout=5).json()
    assert listing["capacity"] == 1024 and 2 <= listing["size"] <= 1024
    assert len(listing["lookups"]) == 2 and listing["history_bytes"] > 0
    assert "evicted" in listing["causes"]


def test_lmcache_explain_prints_a_table_and_json(
    capsys: pytest.CaptureFixture[str], session: Session
) -> None:
    table = invoke(capsys, "explain", "salted", "--url", session.url)
    assert table.code == 0, table.err
    assert "chunk 0: other_cache_salt" in table.out
    assert "cause" in table.out and "another cache salt" in table.out
    raw = invoke(capsys, "explain", "salted", "--url", session.url, "--json")
    assert raw.code == 0, raw.err
    assert raw.json()["miss_chunks_by_cause"] == {"other_cache_salt": 2}
    missing = invoke(capsys, "explain", "never-seen", "--url", session.url)
    assert missing.code == 1 and "HTTP 404" in missing.err
    assert "Traceback" not in missing.err


def _miss_counter(url: str, cause: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("lmcache_mp_lookup_miss_chunks_total{") and f'cause="{cause}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_the_miss_counter_counts_by_cause(session: Session) -> None:
    # Metrics are fed by the event bus thread: wait for the lookups above to be counted.
    wait_for(lambda: _miss_counter(session.url, "other_cache_salt") >= 2)
    assert _miss_counter(session.url, "never_stored") >= 2
    assert _miss_counter(session.url, "partial_chunk") >= 1


def test_an_admin_clear_of_both_tiers_is_a_deletion(session: Session) -> None:
    tokens = random_tokens(7, 1)
    before = set(session.directory.glob("*.data"))
    session.store(tokens, "store-7")
    wait_for(lambda: len(set(session.directory.glob("*.data")) - before) == 1)
    cleared = httpx.post(f"{session.url}/cache/clear", json={"tier": "all"}, timeout=30)
    assert cleared.status_code == 200, cleared.text
    assert session.lookup(tokens, "cleared") == 0
    first = session.explanation("cleared")["first_miss"]
    # L1 is cleared first, then L2: the last removal is the one remembered.
    assert (first["cause"], first["tier"], first["reason"]) == ("evicted", "l2[1]:fs", "deleted")


def test_a_chunk_evicted_from_both_tiers_names_its_eviction(session: Session) -> None:
    victim = random_tokens(6, 1)
    session.store(victim, "victim")
    for index in range(80):  # far more than L1 (about 60 objects) and L2 (20) hold
        session.store(random_tokens(1000 + index, 1), f"flood-{index}")
    wait_for(lambda: session.lookup(victim, "evicted") == 0 and _evicted(session))
    first = session.explanation("evicted")["first_miss"]
    assert first["cause"] == "evicted"
    assert first["tier"] in ("l1", "l2[1]:fs") and first["reason"] == "eviction"
    assert first["policy"] and first["removed_at"] > 0


def _evicted(session: Session) -> bool:
    return bool(session.explanation("evicted")["first_miss"]["cause"] == "evicted")
