"""The client side of ``bench_blend_peer.py``: upstream 0.5.6's own client against two servers.

Run with the compat environment's interpreter (upstream's package and CPU torch;
nothing of this project is imported): ``COMPAT_PYTHON blend_peer_driver.py
SETTINGS_JSON``, the settings naming the servers (label -> ZeroMQ URL), the
prompt sizes in chunks, the rounds and the modes. Per server an
``LMCacheMPWorkerAdapter`` (``lmcache_driven``: KV moved to POSIX shared memory
by the adapter, as upstream's own measurement in reference section 13 did)
registers a tiny KV cache and stores, per size, that many 256-token documents
in one order. Each round then asks every server in turn (the order alternates
round by round) for ``cb_unified_lookup`` of the same documents with the first
kept and the others reversed (one prefix chunk, the rest non-prefix hits),
through the adapter's ``ZmqMultiprocessClient``, polled until it answers, and
ends the session outside the timing; then a ``noop`` round trip per server (the
ceiling: the same client and socket, no work). ``repeat``: the same prompt each
round; ``fresh``: 40 new random tokens at its end each round.

With ``"lockstep": true`` in the settings (``bench_blend_peer.py --clients separate``:
one driver process per server, so neither server's client work warms or cools the
other's measurement) it prints ``ready`` once its documents are stored, then
runs each round only after reading a line from its standard input and prints
``done`` after it; the parent alternates the drivers round by round.

Prints one JSON line last: per server, size and mode, the lookup times in
seconds, the noop times, and the hit chunks of the last lookup.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

os.environ.setdefault("LMCACHE_TRACK_USAGE", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")

CHUNK = 256
BLOCK = 16
MODEL = "blend-peer"
TIMEOUT = 60.0


def main(settings_path: str) -> None:
    import torch
    import zmq
    from lmcache.integration.vllm.vllm_multi_process_adapter import (
        LMCacheMPWorkerAdapter,
        LoadStoreOp,
        ParallelStrategy,
    )
    from lmcache.v1.multiprocess.custom_types import IPCCacheServerKey

    with open(settings_path) as handle:
        settings = json.load(handle)
    sizes: list[int] = settings["sizes"]
    rounds: int = settings["rounds"]
    modes: list[str] = settings["modes"]
    strategy = ParallelStrategy(
        mla_only=False, vllm_world_size=1, vllm_worker_id=0, tp_size=1, pp_size=1, n_servers=1
    )
    extra = {
        "lmcache.mp.mp_transfer_mode": "lmcache_driven",
        "lmcache.mp.mq_timeout": TIMEOUT,
        "lmcache.mp.heartbeat_interval": 5.0,
    }
    context = zmq.Context()
    blocks = sum(sizes) * CHUNK // BLOCK + 1
    workers = {}
    for label, url in settings["servers"].items():
        worker = LMCacheMPWorkerAdapter(url, context, MODEL, BLOCK, strategy, extra_config=extra)
        kv = {"model.layers.0.attn": torch.zeros(2, blocks, BLOCK, 1, 8, dtype=torch.bfloat16)}
        worker.register_kv_caches(kv, layout_hints={"kv_layout": "NHD"})
        workers[label] = (worker, kv)

    def key(tokens: list[int], rid: str) -> IPCCacheServerKey:
        return IPCCacheServerKey(
            model_name=MODEL,
            world_size=1,
            worker_id=None,
            token_ids=tokens,
            start=0,
            end=len(tokens),
            request_id=rid,
            cache_salt="",
            num_kv_readers=1,
        )

    def store(worker: LMCacheMPWorkerAdapter, tokens: list[int], first_block: int, rid: str):
        block_ids = list(range(first_block, first_block + len(tokens) // BLOCK))
        op = LoadStoreOp(token_ids=tokens, block_ids=[block_ids], start=0, end=len(tokens))
        worker.submit_store_request(rid, op, worker.create_recorded_event())
        deadline = time.monotonic() + TIMEOUT
        while rid not in (worker.get_finished({rid})[0] or set()):
            if time.monotonic() > deadline:
                raise SystemExit(f"the store {rid} never finished")
            time.sleep(0.001)

    def unified(client, lookup_key):
        while True:
            result = client.cb_unified_lookup(lookup_key, 1).result(timeout=TIMEOUT)
            if result is not None:
                return result

    rng = random.Random(5)
    queries = {}
    first_block = 1
    for size in sizes:
        docs = [[rng.randrange(1, 128000) for _ in range(CHUNK)] for _ in range(size)]
        stored = [t for d in docs for t in d]
        for label, (worker, _) in workers.items():
            store(worker, stored, first_block, f"store-{label}-{size}")
        first_block += len(stored) // BLOCK
        queries[size] = docs[0] + [t for d in reversed(docs[1:]) for t in d] + docs[0][:40]

    lockstep = bool(settings.get("lockstep"))
    if lockstep:
        print("ready", flush=True)
    figures: dict = {label: {} for label in workers}
    labels = list(workers)
    for size in sizes:
        for mode in modes:
            times: dict[str, list[float]] = {label: [] for label in labels}
            noops: dict[str, list[float]] = {label: [] for label in labels}
            hits: dict[str, int] = {}
            for round_index in range(rounds):
                tail = [rng.randrange(1, 128000) for _ in range(40)] if mode == "fresh" else []
                tokens = queries[size] + tail
                if lockstep and not sys.stdin.readline():
                    raise SystemExit("the parent went away")
                order = labels if round_index % 2 == 0 else labels[::-1]
                for label in order:
                    client = workers[label][0].req_client
                    rid = f"{mode}-{size}-{round_index}"
                    lookup_key = key(tokens, rid)
                    started = time.perf_counter()
                    result = unified(client, lookup_key)
                    times[label].append(time.perf_counter() - started)
                    client.end_session(rid).result(timeout=TIMEOUT)
                    hits[label] = len(result.non_prefix_segments) + (
                        result.prefix_coverage_tokens // CHUNK
                    )
                for label in order:
                    client = workers[label][0].req_client
                    started = time.perf_counter()
                    client.noop().result(timeout=TIMEOUT)
                    noops[label].append(time.perf_counter() - started)
                if lockstep:
                    print("done", flush=True)
            for label in labels:
                figures[label].setdefault(str(size), {})[mode] = {
                    "lookup_s": times[label],
                    "noop_s": noops[label],
                    "hit_chunks": hits[label],
                }
    for worker, _ in workers.values():
        worker.shutdown()
    print(json.dumps(figures))


if __name__ == "__main__":
    main(sys.argv[1])
