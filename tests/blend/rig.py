"""A blend server, CPU workers whose K carries real RoPE, and the blend ops as calls."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import torch

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker, shared_copy
from lmcache_core.protocol.codec import encode_device_handle
from lmcache_core.protocol.types import (
    CacheKey,
    CBMatchResult,
    CBUnifiedLookupResult,
)
from lmcache_core.testing.rope_reference import apply_rope, cos_sin_cache
from lmcache_core.transfer.layout import KVFormat, KVLayout
from tests.data_path.kv import fresh_tokens, request_id
from tests.server_process import LiveServer, server_on_free_ports

CHUNK = 16
BLOCK = 4
HEADS, HEAD_DIM = 2, 16
MAX_POSITION = 4096


def blend_server(*extra: str) -> Any:
    """A blend server on free loopback ports (a context manager)."""
    return server_on_free_ports(
        "--engine-type",
        "blend",
        "--chunk-size",
        str(CHUNK),
        "--l1-size-gb",
        "0.05",
        "--eviction-policy",
        "LRU",
        "--max-cpu-workers",
        "2",
        *extra,
        timeout=180.0,  # start-up is slow on a loaded 2-core machine
    )


def status(server: LiveServer) -> dict[str, Any]:
    response = httpx.get(f"{server.http_url}/status", timeout=5.0)
    response.raise_for_status()
    return dict(response.json()["data_path"])


def locked_objects(server: LiveServer) -> int:
    return int(status(server)["l1"]["locked_objects"])


def shm_cache(cache: torch.Tensor) -> tuple[Any, Any]:
    """A cos/sin cache in shared memory: its Ext handle and the cleanup (keep it alive)."""
    handle, tensor, cleanup = shared_copy(cache)
    return encode_device_handle(handle), (tensor, cleanup)


@dataclass
class RopeWorker:
    """A CPU worker whose cache holds K = RoPE(k_raw[token], position) and V = v[token].

    ``k_raw`` and ``v`` are per token id (so a document's rows are the same wherever it is),
    one ``[layers, heads * head_dim]`` row each, in fp64 (rounded to the KV dtype when written).
    """

    worker: CpuKVWorker
    neox: bool
    cache: torch.Tensor
    rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    keepalive: list[Any] = field(default_factory=list)

    @property
    def layout(self) -> KVLayout:
        return self.worker.layout

    def rows_of(self, tok: int) -> tuple[torch.Tensor, torch.Tensor]:
        if tok not in self.rows:
            gen = torch.Generator().manual_seed(tok)
            shape = (self.layout.num_layers, HEADS * HEAD_DIM)
            self.rows[tok] = (
                torch.randn(shape, generator=gen, dtype=torch.float64),
                torch.randn(shape, generator=gen, dtype=torch.float64),
            )
        return self.rows[tok]

    def raw(self, tokens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """k_raw and v of the tokens: ``[layers, tokens, hidden]`` each (fp64)."""
        rows = [self.rows_of(tok) for tok in tokens]
        return (
            torch.stack([k for k, _ in rows], dim=1),
            torch.stack([v for _, v in rows], dim=1),
        )

    def expected_k(self, tokens: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """K of the tokens computed at ``positions``: ``[layers, tokens, hidden]`` (fp64)."""
        k, _ = self.raw(tokens)
        return apply_rope(
            k, torch.tensor(list(positions)), self.cache, neox=self.neox, head_width=HEAD_DIM
        )

    def _index(self, blocks: Sequence[int], positions: Sequence[int]) -> tuple[torch.Tensor, ...]:
        table = torch.tensor(list(blocks))
        where = torch.tensor(list(positions))
        return table[where // BLOCK], where % BLOCK

    def _plane(self, layer: torch.Tensor, plane: int) -> torch.Tensor:
        """A plane as ``[blocks, block_size, heads, dim]`` (a view)."""
        view = layer[plane]
        return view.transpose(1, 2) if self.layout.format is KVFormat.HND else view

    def write_prompt(self, tokens: Sequence[int], blocks: Sequence[int]) -> None:
        """Fill the prompt's slots as the model would have computed them."""
        positions = range(len(tokens))
        k = self.expected_k(tokens, positions).to(self.layout.dtype)
        _, v = self.raw(tokens)
        v = v.to(self.layout.dtype)
        blk, off = self._index(blocks, positions)
        for index, layer in enumerate(self.worker.layers):
            self._plane(layer, 0)[blk, off] = k[index].view(len(tokens), HEADS, HEAD_DIM)
            self._plane(layer, 1)[blk, off] = v[index].view(len(tokens), HEADS, HEAD_DIM)

    def read(self, blocks: Sequence[int], positions: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """K and V at ``positions`` of a block table: ``[layers, tokens, hidden]`` each."""
        blk, off = self._index(blocks, positions)
        count = len(blk)
        k = torch.stack(
            [self._plane(x, 0)[blk, off].reshape(count, -1) for x in self.worker.layers]
        )
        v = torch.stack(
            [self._plane(x, 1)[blk, off].reshape(count, -1) for x in self.worker.layers]
        )
        return k, v

    def clear(self, blocks: Sequence[int], positions: Sequence[int]) -> None:
        """Zero K and V at ``positions`` of a block table."""
        blk, off = self._index(blocks, positions)
        for layer in self.worker.layers:
            for plane in range(2):
                self._plane(layer, plane)[blk, off] = 0

    def all_zero(self) -> bool:
        """Whether no byte of the whole KV cache is set."""
        return not any(bool(layer.view(torch.uint8).any()) for layer in self.worker.layers)

    def register_rope(self, client: MPClient, **overrides: Any) -> None:
        ext, keep = shm_cache(self.cache)
        self.keepalive.append(keep)
        args = {
            "caches": [ext],
            "head_size": HEAD_DIM,
            "neox": self.neox,
            "group_to_cache": [],
            "group_rot": [],
            "group_head_size": [],
            "kv_quant": "",
        } | overrides
        client.call(
            "cb_register_rope",
            self.worker.instance_id,
            args["caches"],
            args["head_size"],
            args["neox"],
            args["group_to_cache"],
            args["group_rot"],
            args["group_head_size"],
            args["kv_quant"],
        )

    def key(
        self,
        tokens: Sequence[int],
        rid: str,
        *,
        end: int | None = None,
        salt: str = "",
        worker: bool = True,
    ) -> CacheKey:
        return self.worker.key(
            tokens, 0, len(tokens) if end is None else end, rid, worker=worker, cache_salt=salt
        )

    def store(self, tokens: Sequence[int], blocks: Sequence[int], rid: str, salt: str = "") -> bool:
        full = len(tokens) // CHUNK * CHUNK
        return self.worker.store(self.key(tokens, rid, end=full, salt=salt), blocks)

    def retrieve(
        self,
        client: MPClient,
        tokens: Sequence[int],
        rid: str,
        segments: Sequence[CBMatchResult],
        blocks: Sequence[int],
    ) -> bool:
        _, ok = client.call(
            "cb_retrieve_pre_computed",
            self.key(tokens, rid),
            list(segments),
            [list(blocks)],
            self.worker.instance_id,
            b"",
        )
        return bool(ok)

    def close(self) -> None:
        for _, cleanup in self.keepalive:
            cleanup()
        self.worker.close()


@contextmanager
def rope_worker(
    client: MPClient,
    *,
    neox: bool = True,
    fmt: KVFormat = KVFormat.NHD,
    dtype: torch.dtype = torch.bfloat16,
    num_blocks: int = 96,
    model: str = "blend-model",
    register_rope: bool = True,
) -> Iterator[RopeWorker]:
    layout = KVLayout(fmt, 2, num_blocks, BLOCK, HEADS, HEAD_DIM, dtype)
    worker = CpuKVWorker(client, layout, model_name=model)
    made = RopeWorker(worker, neox, cos_sin_cache(MAX_POSITION, HEAD_DIM))
    try:
        worker.register()
        if register_rope:
            made.register_rope(client)
        yield made
    finally:
        made.close()


def unified_lookup(
    client: MPClient, key: CacheKey, tp_size: int = 1, polls: int = 200
) -> CBUnifiedLookupResult:
    """Poll ``cb_unified_lookup`` until it answers (nil = not ready)."""
    import time

    for _ in range(polls):
        result = client.call("cb_unified_lookup", key, tp_size)
        if result is not None:
            assert isinstance(result, CBUnifiedLookupResult), result
            return result
        time.sleep(0.01)
    raise AssertionError("cb_unified_lookup never answered")


def segments_of(result: CBUnifiedLookupResult) -> list[tuple[int, int, int, int]]:
    return [(s.old_st, s.old_ed, s.cur_st, s.cur_ed) for s in result.non_prefix_segments]


def docs(count: int) -> list[list[int]]:
    return [fresh_tokens(CHUNK) for _ in range(count)]


__all__ = ["fresh_tokens", "request_id"]
