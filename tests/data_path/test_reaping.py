"""A worker that pinged and went silent is reaped, told to re-register, and recovers."""

from __future__ import annotations

import time

import pytest

from lmcache_core.protocol.errors import NotRegisteredError
from lmcache_core.protocol.types import CacheKey
from tests.data_path.conftest import Server, SilentWorker
from tests.data_path.kv import CHUNK, fresh_tokens, pick_blocks, probe, randomize, request_id

REAP_TIMEOUT = 30.0  # --worker-reap-timeout-seconds of reap_server
REAP_INTERVAL = 5.0  # the reaper runs every min(timeout / 4, 5 s)


@pytest.mark.slow
def test_silent_worker_is_reaped_and_recovers(
    reap_server: Server, silent_worker: SilentWorker
) -> None:
    worker, quiet = silent_worker.worker, silent_worker.unpinged
    assert worker is not None and quiet is not None and silent_worker.pinged_at is not None
    client = worker.client
    wid = str(worker.instance_id)

    deadline = silent_worker.pinged_at + REAP_TIMEOUT + 3 * REAP_INTERVAL
    while True:
        engine = reap_server.engine()
        silent = {wid, str(silent_worker.driven.instance_id)}
        if not silent & set(engine["worker_liveness"]):
            break
        assert time.monotonic() < deadline, f"not reaped: {engine['worker_liveness']}"
        time.sleep(0.25)
    assert time.monotonic() - silent_worker.pinged_at >= REAP_TIMEOUT
    assert engine["reaped_workers"] == 2  # this worker and the engine-driven one
    assert wid not in engine["workers"]["lmcache_driven"]
    # The worker that never pinged has an hour of grace.
    assert str(quiet.instance_id) in engine["worker_liveness"]

    randomize(worker)
    tokens = fresh_tokens(2 * CHUNK)
    blocks = pick_blocks(8)
    assert worker.store(worker.key(tokens, 0, len(tokens), request_id()), blocks) is False
    assert probe(client, tokens) == 0
    # The next ping says "re-register", exactly once.
    assert client.ping(worker.instance_id) is False
    assert client.ping(worker.instance_id) is True
    assert client.ping(worker.instance_id) is True
    worker.register()
    assert worker.store(worker.key(tokens, 0, len(tokens), request_id()), blocks) is True
    assert probe(client, tokens) == 2
    engine = reap_server.engine()
    assert wid in engine["worker_liveness"]
    assert wid in engine["workers"]["lmcache_driven"]

    # The engine-driven worker went the same way: refused, told once, recovered.
    driven = silent_worker.driven
    assert engine["reaped_workers"] == 2
    assert str(driven.instance_id) not in engine["workers"]["engine_driven"]
    key = CacheKey(driven.model_name, 1, 0, fresh_tokens(CHUNK), 0, CHUNK, request_id())
    with pytest.raises(NotRegisteredError):
        client.prepare_store(key, driven.instance_id)
    assert client.ping(driven.instance_id) is False
    assert client.ping(driven.instance_id) is True
    client.register_engine_driven(driven)
    assert len(client.prepare_store(key, driven.instance_id).context["slots"]) == 1
    client.unregister_engine_driven(driven.instance_id)

    # The never-pinged worker kept working all along.
    randomize(quiet)
    other = fresh_tokens(CHUNK)
    assert quiet.store(quiet.key(other, 0, CHUNK, request_id()), blocks[:4]) is True
    assert probe(client, other) == 1
