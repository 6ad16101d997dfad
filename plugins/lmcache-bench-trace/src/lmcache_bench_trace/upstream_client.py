"""One engine client of the replay, with upstream LMCache 0.5.6's own vLLM adapters.

``COMPAT_PYTHON -m lmcache_bench_trace.upstream_client SHARD SETTINGS_JSON OUT_FILE``

Runs with the compat environment's interpreter (upstream's package and CPU
torch, no ``lmcache_core``): only this package's standard-library modules are
imported. The request loop is :func:`lmcache_bench_trace.engine_client.replay_shard`;
the operations go through the classes vLLM's ``LMCacheMPConnector`` uses: the
scheduler adapter's lookup and ``check_lookup_result`` polling, the worker
adapter's store and retrieve (``lmcache_driven``, KV caches moved to POSIX
shared memory by the adapter) and ``end_session``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from lmcache_bench_trace.engine_client import QUERY_TIMEOUT_S, main, max_chunks
from lmcache_bench_trace.settings import ReplaySettings

os.environ.setdefault("LMCACHE_TRACK_USAGE", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")


def poll(predicate: Callable[[], Any], what: str) -> Any:
    """Call ``predicate`` until it returns something other than None or False."""
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    while True:
        value = predicate()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not done after {QUERY_TIMEOUT_S} s")
        time.sleep(0.0002)


class UpstreamOps:
    """:class:`~lmcache_bench_trace.engine_client.EngineOps` with upstream's adapters."""

    def __init__(self, settings: ReplaySettings) -> None:
        import torch
        import zmq
        from lmcache.integration.vllm.vllm_multi_process_adapter import (
            LMCacheMPSchedulerAdapter,
            LMCacheMPWorkerAdapter,
            LoadStoreOp,
            ParallelStrategy,
        )

        shape = settings.kv
        self.chunk = settings.chunk_size
        self.per_chunk = self.chunk // shape.block_size
        self._op = LoadStoreOp
        extra = {
            "lmcache.mp.mp_transfer_mode": "lmcache_driven",
            "lmcache.mp.mq_timeout": 60.0,
            "lmcache.mp.heartbeat_interval": 5.0,
        }
        strategy = ParallelStrategy(
            mla_only=False, vllm_world_size=1, vllm_worker_id=0, tp_size=1, pp_size=1, n_servers=1
        )
        context = zmq.Context()
        model, block = settings.model_name, shape.block_size
        self.scheduler = LMCacheMPSchedulerAdapter(
            [settings.url], context, model, block, strategy, extra_config=extra
        )
        self.worker = LMCacheMPWorkerAdapter(
            settings.url, context, model, block, strategy, extra_config=extra
        )
        blocks = max_chunks(settings) * self.per_chunk
        self.kv = {
            f"model.layers.{i}.attn": torch.zeros(
                2, blocks, block, shape.num_heads, shape.head_dim, dtype=torch.bfloat16
            )
            for i in range(shape.num_layers)
        }
        self.worker.register_kv_caches(self.kv, layout_hints={"kv_layout": "NHD"})

    def lookup(self, request_id: str, tokens: list[int], end: int) -> None:
        """The scheduler adapter's lookup (it aligns ``tokens`` to chunks itself)."""
        self.scheduler.maybe_submit_lookup_request(request_id, tokens[:end])

    def query(self, request_id: str) -> int:
        """``check_lookup_result`` until it answers; hit tokens become chunks."""
        hit_tokens = poll(lambda: self.scheduler.check_lookup_result(request_id), "the lookup")
        return int(hit_tokens) // self.chunk

    def retrieve(self, request_id: str, tokens: list[int], chunks: int) -> None:
        """Submit the retrieve and wait until the adapter reports it finished."""
        blocks = [list(range(chunks * self.per_chunk))]
        op = self._op(token_ids=tokens, block_ids=blocks, start=0, end=chunks * self.chunk)
        self.worker.submit_retrieve_request(request_id, op, self.worker.create_recorded_event())
        poll(lambda: request_id in (self.worker.get_finished(set())[1] or set()), "the retrieve")

    def store(self, request_id: str, tokens: list[int], first: int, last: int) -> None:
        """Submit the store and wait until the adapter reports it finished."""
        blocks = [list(range(first * self.per_chunk, last * self.per_chunk))]
        op = self._op(
            token_ids=tokens, block_ids=blocks, start=first * self.chunk, end=last * self.chunk
        )
        store_id = f"{request_id}-store"
        self.worker.submit_store_request(store_id, op, self.worker.create_recorded_event())
        poll(lambda: store_id in (self.worker.get_finished({store_id})[0] or set()), "the store")

    def end_session(self, request_id: str) -> None:
        """The scheduler adapter's ``end_session``."""
        self.scheduler.end_session(request_id)

    def close(self) -> None:
        """Shut both adapters down."""
        try:
            self.worker.shutdown()
        finally:
            self.scheduler.shutdown()


if __name__ == "__main__":
    main(make_ops=UpstreamOps)
