"""Upstream LMCache 0.5.6's own client subscribes to our KV event stream (run in the compat venv).

Usage: python drive_upstream_kv_events.py tcp://127.0.0.1:PORT

Checks ``get_experimental`` advertises ``kv_event_stream``, opens
``subscribe_kv_events`` through upstream's RequestClient (its credits and
cancel, its typed KVEventBatch decode), stores 3 chunks through upstream's
worker adapter, and reads batches until the three ``stored`` records of L1
(medium ``CPU``) arrived. Prints one JSON line; exits non-zero on a mismatch.
"""

import json
import os
import random
import sys
import threading

os.environ.setdefault("LMCACHE_TRACK_USAGE", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")

from drive_upstream import BLOCK, MODEL, make_adapters, register, wait_for
from lmcache.integration.vllm.vllm_multi_process_adapter import LoadStoreOp


def main(url: str) -> None:
    scheduler, worker = make_adapters(url)
    client = worker.req_client
    report = {"experimental": client.get_experimental().result(timeout=10)}
    chunk = client.get_chunk_size().result(timeout=10)
    register(worker)  # the adapter stores from these caches

    batches = []
    stream = client.subscribe_kv_events(4242, MODEL, 0, 64)

    def read() -> None:
        try:
            for batch in stream:
                batches.append(batch)
        except ConnectionError as exc:  # the server ended the stream
            batches.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: batches or None, "the first batch")
    first = batches[0]
    report["first"] = {"enabled": first.enabled, "lost": first.lost, "events": len(first.events)}

    tokens = [random.Random(11).randrange(30000) for _ in range(3 * chunk)]
    blocks = list(range(1, 1 + 3 * (chunk // BLOCK)))
    op = LoadStoreOp(token_ids=tokens, block_ids=[blocks], start=0, end=3 * chunk)
    worker.submit_store_request("kv-store", op, worker.create_recorded_event())
    wait_for(lambda: "kv-store" in (worker.get_finished({"kv-store"})[0] or set()), "the store")

    def cpu_stores():
        records = [
            r
            for b in batches
            if not isinstance(b, Exception)
            for r in b.events
            if r.kind == "stored" and r.medium == "CPU"
        ]
        return records if len(records) >= 3 else None

    records = wait_for(cpu_stores, "three stored records", 30)
    hashes = [r.block_hashes[0] for r in records]
    report["stored"] = len(records)
    report["tokens_match"] = [r.token_ids for r in records] == [
        tokens[i * chunk : (i + 1) * chunk] for i in range(3)
    ]
    report["parents_chain"] = [r.parent_block_hash for r in records] == [None, *hashes[:2]]
    report["incarnations"] = len({b.incarnation for b in batches if not isinstance(b, Exception)})
    report["cursor_advanced"] = batches[-1].next_cursor >= records[-1].seq
    stream.close()  # upstream's cancel
    reader.join(10)
    report["reader_stopped"] = not reader.is_alive()
    worker.shutdown()
    scheduler.shutdown()
    print(json.dumps(report))
    ok = (
        "kv_event_stream" in report["experimental"]
        and first.enabled
        and report["tokens_match"]
        and report["parents_chain"]
        and report["incarnations"] == 1
        and report["reader_stopped"]
    )
    if not ok:
        raise SystemExit(f"mismatch: {report}")


if __name__ == "__main__":
    main(sys.argv[1])
