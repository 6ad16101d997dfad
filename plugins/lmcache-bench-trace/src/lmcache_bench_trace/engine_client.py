"""One engine client of the replay (run as its own process): the request loop, and our client.

``python -m lmcache_bench_trace.engine_client SHARD SETTINGS_JSON OUT_FILE``

Shard ``k`` of ``concurrency`` replays requests ``k, k + n, k + 2n, ...`` the
way an engine drives the server: a lookup, the prefetch query until it is done,
a retrieve of the hit chunks, a store of the missed ones, ``end_session``.
It writes its measurements to ``OUT_FILE`` as JSON (see :func:`empty_report`).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Protocol

from lmcache_bench_trace.settings import ReplaySettings
from lmcache_bench_trace.trace import TraceRequest, iter_trace

OPS = ("lookup", "query", "retrieve", "store", "end_session", "request")
QUERY_TIMEOUT_S = 30.0
MAX_ERRORS_KEPT = 20


def empty_report(shard: int) -> dict[str, Any]:
    """What an engine client reports (both clients write this shape)."""
    return {
        "shard": shard,
        "requests": 0,
        "failed": 0,
        "errors": [],
        "latency_ms": {op: [] for op in OPS},
        "hits": {},  # request index -> hit chunks
        "input_tokens": 0,
        "hit_tokens": 0,
        "bytes_stored": 0,
        "bytes_retrieved": 0,
        "wall_s": 0.0,
    }


def my_requests(settings: ReplaySettings, shard: int) -> Iterator[TraceRequest]:
    """This shard's requests, each yielded at its arrival time (unless as fast as possible)."""
    deadline = (
        settings.start_at + settings.time_budget_s if settings.time_budget_s is not None else None
    )
    for request in iter_trace(settings.trace, settings.max_requests):
        if request.index % settings.concurrency != shard:
            continue
        if deadline is not None and time.time() >= deadline:
            return
        if not settings.as_fast_as_possible:
            due = settings.start_at + request.arrival_s / settings.time_scale
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
        yield request


def wait_for_eviction_round(status_url: str, watermark: float) -> None:
    """Block until L1 usage is at or below the watermark (the controller's round ran)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{status_url}/status", timeout=5) as response:
            l1 = json.loads(response.read())["data_path"]["l1"]
        if l1["used_bytes"] <= watermark * l1["capacity_bytes"]:
            return
        time.sleep(0.01)
    raise TimeoutError("L1 stayed above the eviction watermark for 10 s")


def record_failure(report: dict[str, Any], request: TraceRequest, error: str) -> None:
    """Count a failed request and keep its reason (the first few)."""
    report["failed"] += 1
    if len(report["errors"]) < MAX_ERRORS_KEPT:
        report["errors"].append(f"request {request.index}: {error}")


def timed(latencies: list[float], call: Callable[[], Any]) -> Any:
    """Run ``call`` and append its duration in ms."""
    start = time.perf_counter()
    result = call()
    latencies.append((time.perf_counter() - start) * 1e3)
    return result


class EngineOps(Protocol):
    """One client's operations, as an engine issues them (ours or upstream's adapters)."""

    def lookup(self, request_id: str, tokens: list[int], end: int) -> None:
        """Start the prefix lookup of ``tokens[:end]``."""

    def query(self, request_id: str) -> int:
        """Wait for the lookup's result; its hit chunks."""

    def retrieve(self, request_id: str, tokens: list[int], chunks: int) -> None:
        """Copy the first ``chunks`` chunks into the KV cache (raises if not all came)."""

    def store(self, request_id: str, tokens: list[int], first: int, last: int) -> None:
        """Store chunks ``[first, last)`` (raises if they were not all cached)."""

    def end_session(self, request_id: str) -> None:
        """End the request."""

    def close(self) -> None:
        """Unregister and release everything."""


def max_chunks(settings: ReplaySettings) -> int:
    """The most whole chunks of any replayed request (the KV cache's size)."""
    requests = iter_trace(settings.trace, settings.max_requests)
    return max((r.full_chunks(settings.chunk_size) for r in requests), default=1) or 1


def write_progress(path: str | None, done: int) -> None:
    """Tell the driver how many requests this client finished (for its progress bar)."""
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(str(done))


def replay_shard(
    shard: int, settings: ReplaySettings, ops: EngineOps, progress: str | None = None
) -> dict[str, Any]:
    """Replay this shard's requests through ``ops``; the report (``ops`` is closed).

    ``progress`` names a file rewritten with the finished count every 10 requests.
    """
    chunk = settings.chunk_size
    object_bytes = settings.kv.object_bytes(chunk)
    report = empty_report(shard)
    lat = report["latency_ms"]
    started = time.perf_counter()
    try:
        for request in my_requests(settings, shard):
            report["requests"] += 1
            report["input_tokens"] += request.input_length
            full = request.full_chunks(chunk)
            rid = f"trace-{shard}-{request.index}"
            begin = time.perf_counter()
            try:
                tokens = request.tokens()[: full * chunk]
                hit = 0
                if full:
                    timed(lat["lookup"], partial(ops.lookup, rid, tokens, full * chunk))
                    hit = timed(lat["query"], partial(ops.query, rid))
                if hit:
                    timed(lat["retrieve"], partial(ops.retrieve, rid, tokens, hit))
                    report["bytes_retrieved"] += hit * object_bytes
                if hit < full:
                    timed(lat["store"], partial(ops.store, rid, tokens, hit, full))
                    report["bytes_stored"] += (full - hit) * object_bytes
                timed(lat["end_session"], partial(ops.end_session, rid))
                lat["request"].append((time.perf_counter() - begin) * 1e3)
                report["hits"][str(request.index)] = hit
                report["hit_tokens"] += hit * chunk
                if settings.status_url:
                    wait_for_eviction_round(settings.status_url, settings.watermark)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and named
                record_failure(report, request, f"{type(exc).__name__}: {exc}")
            if report["requests"] % 10 == 0:
                write_progress(progress, report["requests"])
    finally:
        report["wall_s"] = time.perf_counter() - started
        ops.close()
    return report


class OurOps:
    """:class:`EngineOps` with our client and a CPU worker's KV cache in shared memory."""

    def __init__(self, settings: ReplaySettings) -> None:
        import torch

        from lmcache_core.client import MPClient
        from lmcache_core.client.cpu_worker import CpuKVWorker
        from lmcache_core.protocol.types import pack_token_ids
        from lmcache_core.transfer.layout import KVFormat, KVLayout

        shape = settings.kv
        self.chunk = settings.chunk_size
        self.per_chunk = self.chunk // shape.block_size
        layout = KVLayout(
            KVFormat.NHD,
            num_layers=shape.num_layers,
            num_blocks=max_chunks(settings) * self.per_chunk,
            block_size=shape.block_size,
            num_heads=shape.num_heads,
            head_dim=shape.head_dim,
            dtype=torch.bfloat16,
        )
        self._pack = pack_token_ids
        self._packed: tuple[str, Any] = ("", None)
        self.client = MPClient(settings.url, timeout=60)
        self.worker = CpuKVWorker(self.client, layout, model_name=settings.model_name)
        self.worker.register()

    def _tokens(self, request_id: str, tokens: list[int]) -> Any:
        """The request's tokens, encoded once for all its messages."""
        if self._packed[0] != request_id:
            self._packed = (request_id, self._pack(tokens))
        return self._packed[1]

    def lookup(self, request_id: str, tokens: list[int], end: int) -> None:
        """Our lookup (acknowledged once the job is registered)."""
        key = self.worker.key(self._tokens(request_id, tokens), 0, end, request_id, worker=False)
        self.client.lookup(key)

    def query(self, request_id: str) -> int:
        """``query_prefetch_status`` until it is not None."""
        deadline = time.monotonic() + QUERY_TIMEOUT_S
        while True:
            result = self.client.query_prefetch_status(request_id)
            if result is not None:
                return int(result)
            if time.monotonic() > deadline:
                raise TimeoutError(f"lookup of {request_id} not done after {QUERY_TIMEOUT_S} s")
            time.sleep(0.0002)

    def retrieve(self, request_id: str, tokens: list[int], chunks: int) -> None:
        """Retrieve the hit chunks into the first blocks."""
        key = self.worker.key(self._tokens(request_id, tokens), 0, chunks * self.chunk, request_id)
        if not self.worker.retrieve(key, range(chunks * self.per_chunk)):
            raise RuntimeError(f"retrieve of {chunks} hit chunks returned False")

    def store(self, request_id: str, tokens: list[int], first: int, last: int) -> None:
        """Store the missed chunks from their blocks."""
        packed = self._tokens(request_id, tokens)
        key = self.worker.key(packed, first * self.chunk, last * self.chunk, request_id)
        if not self.worker.store(key, range(first * self.per_chunk, last * self.per_chunk)):
            raise RuntimeError(f"store of {last - first} chunks returned False")

    def end_session(self, request_id: str) -> None:
        """End the session."""
        self.client.end_session(request_id)

    def close(self) -> None:
        """Unregister, unlink the shared memory, close the socket."""
        try:
            self.worker.unregister()
        finally:
            self.worker.close()
            self.client.close()


def main(
    argv: list[str] | None = None, make_ops: Callable[[ReplaySettings], EngineOps] = OurOps
) -> None:
    """Entry point: ``SHARD SETTINGS_JSON OUT_FILE``; the report is written even on a crash."""
    args = sys.argv[1:] if argv is None else argv
    shard, settings, out = int(args[0]), ReplaySettings.from_json(args[1]), args[2]
    try:
        report = replay_shard(shard, settings, make_ops(settings), out + ".progress")
    except Exception:  # noqa: BLE001 - a client that cannot start reports why
        report = empty_report(shard)
        report["errors"].append(traceback.format_exc())
        report["fatal"] = True
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
