"""Batched copies between a device-resident paged KV cache and host L1 objects.

A store gathers the chunks' blocks into a staging buffer on the KV cache's device, in the
L1 object layout (one indexed copy per layer and batch, :class:`~.paged.PagedKVCache`, no
Python loop over blocks), then moves each run of objects that are adjacent in the host
arena with **one** DMA. A retrieve does the reverse: one DMA per run into staging, then one
indexed scatter per layer, honouring ``skip_first_n_tokens``.

Everything is enqueued on the caller's current stream: the staging buffer is reused batch
after batch, which is safe because the stream runs the next gather only after the previous
DMA. The code is device-agnostic; the tests run it on CPU tensors (staging on the CPU), the
GPU tests on CUDA with pinned host objects (``non_blocking`` DMAs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmcache_core.transfer.paged import PagedKVCache

__all__ = ["StagedCopier", "host_runs"]


def host_runs(objects: Sequence[torch.Tensor], nbytes: int) -> list[tuple[int, int]]:
    """Runs of objects adjacent in one storage: ``(first index, count)``."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(objects):
        start = objects[i]
        storage = start.untyped_storage().data_ptr()
        count = 1
        while (
            i + count < len(objects)
            and objects[i + count].untyped_storage().data_ptr() == storage
            and objects[i + count].data_ptr() == start.data_ptr() + count * nbytes
        ):
            count += 1
        runs.append((i, count))
        i += count
    return runs


def _run_view(objects: Sequence[torch.Tensor], first: int, count: int, nbytes: int) -> torch.Tensor:
    head = objects[first]
    if count == 1:
        return head
    return head.as_strided((count * nbytes,), (1,), head.storage_offset())


class StagedCopier:
    """Store and retrieve through a device staging buffer of ``max_chunks`` objects.

    Args:
        cache: The KV cache, its layers on one device.
        chunk_tokens: Tokens per chunk (object).
        max_chunks: Objects per batch (the staging buffer's size in objects).
    """

    def __init__(self, cache: PagedKVCache, chunk_tokens: int, max_chunks: int = 8) -> None:
        if max_chunks <= 0:
            raise ValueError(f"max_chunks must be positive, got {max_chunks}")
        self._cache = cache
        self._tokens = chunk_tokens
        self._bpc = cache.layout.blocks_per_chunk(chunk_tokens)
        self._nbytes = cache.layout.object_nbytes(chunk_tokens)
        self._max = max_chunks
        device = cache.layers[0].device
        self._staging = torch.empty(max_chunks * self._nbytes, dtype=torch.uint8, device=device)

    @property
    def staging_bytes(self) -> int:
        """Bytes of the staging buffer."""
        return int(self._staging.numel())

    def _staged(self, count: int) -> list[torch.Tensor]:
        n = self._nbytes
        return [self._staging[i * n : (i + 1) * n] for i in range(count)]

    def check(self, objects: Sequence[torch.Tensor], block_ids: Sequence[int]) -> None:
        """Check a store or retrieve before anything is enqueued.

        Raises:
            ValueError: Objects of the wrong size or type, too few or out-of-range ids.
        """
        for i, obj in enumerate(objects):
            if obj.dtype != torch.uint8 or obj.dim() != 1 or obj.numel() != self._nbytes:
                raise ValueError(f"host object {i} is not a {self._nbytes}-byte uint8 vector")
        need = len(objects) * self._bpc
        if len(block_ids) < need:
            raise ValueError(f"{len(objects)} chunks need {need} block ids, got {len(block_ids)}")
        # Every batch's ids, checked before the first batch is enqueued.
        used = [int(b) for b in block_ids[:need]]
        blocks = self._cache.layout.num_blocks
        if used and (min(used) < 0 or max(used) >= blocks):
            bad = min(used) if min(used) < 0 else max(used)
            raise ValueError(f"block id {bad} is outside [0, {blocks})")

    def store(self, block_ids: Sequence[int], objects: Sequence[torch.Tensor]) -> None:
        """Enqueue paged blocks -> host objects (``objects[i]`` gets chunk ``i``).

        Raises:
            ValueError: Bad ids or objects, before anything is enqueued.
        """
        self.check(objects, block_ids)
        ids = list(block_ids[: len(objects) * self._bpc])
        self._cache.validate(ids, self._tokens, self._staged(min(len(objects), self._max)))
        n = self._nbytes
        for first in range(0, len(objects), self._max):
            batch = objects[first : first + self._max]
            staged = self._staged(len(batch))
            self._cache.gather(
                ids[first * self._bpc : (first + len(batch)) * self._bpc], self._tokens, staged
            )
            for start, count in host_runs(batch, n):
                _run_view(batch, start, count, n).copy_(
                    self._staging[start * n : (start + count) * n], non_blocking=True
                )

    def retrieve(
        self,
        objects: Sequence[torch.Tensor],
        block_ids: Sequence[int],
        skip_first_n_tokens: int = 0,
    ) -> None:
        """Enqueue host objects -> paged blocks, leaving the first tokens untouched.

        Raises:
            ValueError: Bad ids, objects or skip, before anything is enqueued.
        """
        if skip_first_n_tokens < 0:
            raise ValueError(f"skip_first_n_tokens must be >= 0, got {skip_first_n_tokens}")
        self.check(objects, block_ids)
        ids = list(block_ids[: len(objects) * self._bpc])
        self._cache.validate(ids, self._tokens, self._staged(min(len(objects), self._max)))
        n = self._nbytes
        for first in range(0, len(objects), self._max):
            batch = objects[first : first + self._max]
            skip = max(0, skip_first_n_tokens - first * self._tokens)
            if skip >= len(batch) * self._tokens:
                continue  # the whole batch lies in the skipped prefix
            staged = self._staged(len(batch))
            for start, count in host_runs(batch, n):
                self._staging[start * n : (start + count) * n].copy_(
                    _run_view(batch, start, count, n), non_blocking=True
                )
            self._cache.scatter(
                staged,
                ids[first * self._bpc : (first + len(batch)) * self._bpc],
                self._tokens,
                skip,
            )
