"""Drive our server with upstream LMCache 0.5.6's own vLLM adapters (run in the compat venv).

Usage: python drive_upstream.py tcp://127.0.0.1:PORT

Runs the path vLLM's LMCacheMPConnector takes on a CPU-only host in lmcache_driven
mode: register KV caches (moved to POSIX shared memory by the adapter, sent as
cpu_shm handles), store, lookup through the scheduler adapter, query, retrieve into
other blocks, end the session; plus the small RPCs through the raw RequestClient.
Prints one JSON line with what it saw; exits non-zero on any mismatch.
"""

import json
import os
import random
import sys
import time

os.environ.setdefault("LMCACHE_TRACK_USAGE", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")

import torch
import zmq
from lmcache.integration.vllm.vllm_multi_process_adapter import (
    LMCacheMPSchedulerAdapter,
    LMCacheMPWorkerAdapter,
    LoadStoreOp,
    ParallelStrategy,
)

BLOCK = 16
LAYERS, BLOCKS, HEADS, DIM = 4, 112, 2, 64
MODEL = "compat-model"


def wait_for(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value is not None and value is not False:
            return value
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}")


def make_adapters(url: str, heartbeat_interval: float = 5.0):
    """Upstream's scheduler and worker adapters for one server, as vLLM builds them."""
    extra = {
        "lmcache.mp.mp_transfer_mode": "lmcache_driven",
        "lmcache.mp.mq_timeout": 20.0,
        "lmcache.mp.heartbeat_interval": heartbeat_interval,
    }
    strategy = ParallelStrategy(
        mla_only=False, vllm_world_size=1, vllm_worker_id=0, tp_size=1, pp_size=1, n_servers=1
    )
    context = zmq.Context()
    scheduler = LMCacheMPSchedulerAdapter(
        [url], context, MODEL, BLOCK, strategy, extra_config=extra
    )
    worker = LMCacheMPWorkerAdapter(url, context, MODEL, BLOCK, strategy, extra_config=extra)
    return scheduler, worker


def register(worker, seed: int = 1):
    """Register random bf16 KV caches (the adapter moves them to shared memory)."""
    kv = {
        f"model.layers.{i}.attn": torch.zeros(2, BLOCKS, BLOCK, HEADS, DIM, dtype=torch.bfloat16)
        for i in range(LAYERS)
    }
    worker.register_kv_caches(kv, layout_hints={"kv_layout": "NHD"})
    generator = torch.Generator().manual_seed(seed)
    for tensor in kv.values():  # the adapter moved their storage to shared memory
        tensor.copy_(torch.randn(tensor.shape, generator=generator).to(torch.bfloat16))
    return kv


def round_trip(scheduler, worker, kv, chunk: int, name: str, seed: int = 7):
    """Store 3 chunks, look them up, retrieve them into other blocks: (hit tokens, identical)."""
    chunks = 3
    tokens = [random.Random(seed).randrange(30000) for _ in range(chunks * chunk + 5)]
    blocks_per_chunk = chunk // BLOCK
    store_blocks = list(range(1, 1 + chunks * blocks_per_chunk))
    store_id, load_id = f"{name}-store", f"{name}-load"
    op = LoadStoreOp(token_ids=tokens, block_ids=[store_blocks], start=0, end=chunks * chunk)
    worker.submit_store_request(store_id, op, worker.create_recorded_event())
    wait_for(lambda: store_id in (worker.get_finished({store_id})[0] or set()), "the store")

    scheduler.maybe_submit_lookup_request(load_id, tokens)
    hit_tokens = wait_for(lambda: scheduler.check_lookup_result(load_id), "the lookup", 30)

    originals = {name: t.clone() for name, t in kv.items()}
    load_blocks = list(range(50, 50 + chunks * blocks_per_chunk))
    for tensor in kv.values():
        tensor[:, load_blocks] = 0
    op = LoadStoreOp(token_ids=tokens, block_ids=[load_blocks], start=0, end=hit_tokens)
    worker.submit_retrieve_request(load_id, op, worker.create_recorded_event())
    wait_for(lambda: load_id in (worker.get_finished(set())[1] or set()), "the retrieve")
    identical = all(
        torch.equal(kv[name][:, load_blocks], originals[name][:, store_blocks]) for name in kv
    )
    scheduler.end_session(load_id)
    return hit_tokens, identical


def main(url: str) -> None:
    scheduler, worker = make_adapters(url)
    report = {}
    client = worker.req_client
    report["noop"] = client.noop().result(timeout=10)
    report["ping"] = client.ping(None).result(timeout=10)
    chunk = client.get_chunk_size().result(timeout=10)
    report["chunk_size"] = chunk

    kv = register(worker)
    hit_tokens, identical = round_trip(scheduler, worker, kv, chunk, "req")
    report["hit_tokens"] = hit_tokens
    report["bytes_identical"] = identical
    report["query_after_end"] = client.query_prefetch_status("req-load").result(timeout=10)
    worker.shutdown()
    scheduler.shutdown()
    print(json.dumps(report))
    expected_hits = 3 * chunk
    if not identical or hit_tokens != expected_hits or report["noop"] != "OK":
        raise SystemExit(f"mismatch: {report}")


if __name__ == "__main__":
    main(sys.argv[1])
