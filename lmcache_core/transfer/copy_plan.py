"""Copy plans: (block ids, chunk) -> batched 2-D copy descriptors, contiguous runs merged.

A store copies, for every chunk, layer and K/V plane, the chunk's tokens from the paged
blocks into the L1 object ``[kv, layers, tokens, hidden]``; a retrieve copies them back.
:func:`plan_copies` turns a request into :class:`CopySegment` descriptors, each one
``cudaMemcpy2DAsync``-shaped (``height`` rows of ``width`` bytes, at ``src_pitch`` and
``dst_pitch``), and merges what is contiguous:

* consecutive block ids whose blocks are adjacent in memory (flash-attn NHD, MLA): one
  segment per run, layer and plane;
* consecutive blocks at a constant stride (flashinfer's ``[nb, 2, ...]``, blocks-first
  views, cross-layer tensors): one 2-D segment per run, layer and plane;
* HND (heads before tokens): one 2-D segment per run, layer, plane and head (token rows of
  one head are ``head_dim`` wide).

Addresses are byte offsets: ``src`` from the start of the source tensor's storage, ``dst``
from the start of the object. The plan is device-independent; :func:`execute_plan` runs it
with torch (any device), which is how the tests check every layout on the CPU against a
naive per-block copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmcache_core.transfer.layout import KVFormat, KVLayout

__all__ = [
    "CopySegment",
    "LayerAddressing",
    "addressing_of",
    "block_runs",
    "execute_plan",
    "plan_copies",
    "storage_bytes",
]


@dataclass(frozen=True, slots=True)
class LayerAddressing:
    """Where one layer's elements are, in elements from its storage's start.

    Attributes:
        source: Index of the storage (registered tensor) holding the layer.
        base: Offset of element ``[0, 0, 0, 0, 0]``.
        kv: Stride between the K and V planes (0 for MLA).
        block: Stride between blocks.
        token: Stride between tokens of a block.
        head: Stride between heads (0 for MLA).
        dim: Stride between elements of a head (1 for a copyable layer).
    """

    source: int
    base: int
    kv: int
    block: int
    token: int
    head: int
    dim: int


def addressing_of(
    views: Sequence[torch.Tensor], layout: KVLayout, storages: Sequence[torch.Tensor]
) -> list[LayerAddressing]:
    """The addressing of per-layer canonical views.

    Args:
        views: Per-layer views in ``layout``'s per-layer shape.
        layout: Their layout.
        storages: The registered tensors; each view's storage must be one of theirs.

    Raises:
        ValueError: A view whose last dimension is strided, or that is in none of
            ``storages``.
    """
    pointers = [s.untyped_storage().data_ptr() for s in storages]
    out = []
    for index, view in enumerate(views):
        stride = view.stride()
        if layout.format is KVFormat.NHD:
            kv, block, token, head, dim = stride
        elif layout.format is KVFormat.HND:
            kv, block, head, token, dim = stride
        else:
            block, token, dim = stride
            kv = head = 0
        if dim != 1 and layout.head_dim > 1:
            raise ValueError(
                f"layer {index}: the head dimension must be contiguous (stride {list(stride)})"
            )
        try:
            source = pointers.index(view.untyped_storage().data_ptr())
        except ValueError:
            raise ValueError(f"layer {index} is not in a registered tensor") from None
        out.append(LayerAddressing(source, int(view.storage_offset()), kv, block, token, head, 1))
    return out


@dataclass(frozen=True, slots=True)
class CopySegment:
    """One 2-D copy between a paged storage and an L1 object (bytes).

    Attributes:
        source: Index of the paged storage.
        src: Offset in that storage.
        obj: Index of the object (the chunk's position in the request).
        dst: Offset in the object.
        width: Bytes per row.
        height: Rows (1: a plain contiguous copy).
        src_pitch: Bytes from one row to the next in the storage.
        dst_pitch: Bytes from one row to the next in the object.
    """

    source: int
    src: int
    obj: int
    dst: int
    width: int
    height: int
    src_pitch: int
    dst_pitch: int

    @property
    def nbytes(self) -> int:
        """Bytes moved."""
        return self.width * self.height


def _segment(
    source: int, src: int, obj: int, dst: int, width: int, height: int, sp: int, dp: int
) -> CopySegment:
    if height > 1 and sp == width and dp == width:
        return CopySegment(source, src, obj, dst, width * height, 1, width * height, width * height)
    if height == 1:
        sp = dp = width
    return CopySegment(source, src, obj, dst, width, height, sp, dp)


def block_runs(
    block_ids: Sequence[int], blocks_per_chunk: int, chunks: int
) -> list[list[tuple[int, int, int]]]:
    """Per chunk, runs of consecutive block ids: ``(position in chunk, first id, count)``."""
    out: list[list[tuple[int, int, int]]] = []
    for c in range(chunks):
        ids = block_ids[c * blocks_per_chunk : (c + 1) * blocks_per_chunk]
        runs: list[tuple[int, int, int]] = []
        start = 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or int(ids[i]) != int(ids[i - 1]) + 1:
                runs.append((start, int(ids[start]), i - start))
                start = i
        out.append(runs)
    return out


def plan_copies(
    addressing: Sequence[LayerAddressing],
    layout: KVLayout,
    block_ids: Sequence[int],
    chunk_tokens: int,
    chunks: int,
    skip_first_n_tokens: int = 0,
) -> list[CopySegment]:
    """The copies of ``chunks`` chunks of ``chunk_tokens`` tokens.

    Args:
        addressing: Per layer, where its elements are (:func:`addressing_of`).
        layout: The per-layer layout.
        block_ids: The chunks' block ids in token order (at least ``chunks * bpc``).
        chunk_tokens: Tokens per chunk (a multiple of the block size).
        chunks: Chunks to copy; object ``i`` holds chunk ``i``.
        skip_first_n_tokens: Leading tokens of the whole range left out (a retrieve's
            prefix the engine already holds).

    Raises:
        ValueError: Too few block ids, ids out of range, a bad chunk size or skip.
    """
    if len(addressing) != layout.num_layers:
        raise ValueError(f"{len(addressing)} layer addressings for {layout.num_layers} layers")
    bpc = layout.blocks_per_chunk(chunk_tokens)
    if len(block_ids) < chunks * bpc:
        raise ValueError(f"{chunks} chunks need {chunks * bpc} block ids, got {len(block_ids)}")
    if skip_first_n_tokens < 0:
        raise ValueError(f"skip_first_n_tokens must be >= 0, got {skip_first_n_tokens}")
    used = [int(b) for b in block_ids[: chunks * bpc]]
    if used and (min(used) < 0 or max(used) >= layout.num_blocks):
        bad = min(used) if min(used) < 0 else max(used)
        raise ValueError(f"block id {bad} is outside [0, {layout.num_blocks})")
    isz, bs, hidden, dim = layout.itemsize, layout.block_size, layout.hidden, layout.head_dim
    heads, layers = layout.num_heads, layout.num_layers
    segments: list[CopySegment] = []
    for c, runs in enumerate(block_runs(used, bpc, chunks)):
        for run_pos, run_first, run_count in runs:
            tok_lo = max(0, skip_first_n_tokens - c * chunk_tokens - run_pos * bs)
            if tok_lo >= run_count * bs:
                continue
            # A skip ending inside the run: its first whole blocks go, a partial one stays.
            skip_blocks, t0 = divmod(tok_lo, bs)
            first, pos, count = (
                run_first + skip_blocks,
                run_pos + skip_blocks,
                run_count - skip_blocks,
            )
            for layer, a in enumerate(addressing):
                for kv in range(layout.kv_size):
                    src0 = a.base + kv * a.kv + first * a.block
                    dst0 = (kv * layers + layer) * chunk_tokens + pos * bs
                    segments.extend(
                        _run_segments(a, src0, c, dst0, count, t0, bs, hidden, dim, heads, isz)
                    )
    return segments


def _run_segments(
    a: LayerAddressing,
    src0: int,
    obj: int,
    dst_token0: int,
    count: int,
    t0: int,
    bs: int,
    hidden: int,
    dim: int,
    heads: int,
    isz: int,
) -> list[CopySegment]:
    """The segments of ``count`` consecutive blocks starting at element ``src0``.

    Tokens before ``t0`` of the first block are left out; ``dst_token0`` is the first
    block's first token row in the object.
    """
    rows_contiguous = heads == 1 or a.head == dim
    out: list[CopySegment] = []
    # Per head (HND) or the whole row at once (NHD, MLA).
    parts = [(0, hidden)] if rows_contiguous else [(h, dim) for h in range(heads)]

    def token_rows(src: int, dst: int, width: int, rows: int) -> CopySegment:
        """``rows`` token rows of ``width`` elements from element ``src`` to element ``dst``."""
        return _segment(
            a.source, src * isz, obj, dst * isz, width * isz, rows, a.token * isz, hidden * isz
        )

    for h, width in parts:
        src_h = src0 + h * a.head
        dst_h = dst_token0 * hidden + h * dim
        if a.block == bs * a.token:
            # Token rows continue at one pitch across the blocks: one 2-D copy for the run.
            out.append(
                token_rows(src_h + t0 * a.token, dst_h + t0 * hidden, width, count * bs - t0)
            )
            continue
        start = 0
        if t0:  # the partial first block on its own
            out.append(token_rows(src_h + t0 * a.token, dst_h + t0 * hidden, width, bs - t0))
            start = 1
        if start == count:
            continue
        if a.token == width and width == hidden:
            # Whole blocks are contiguous rows of bs * hidden: one 2-D copy at the block pitch.
            out.append(
                _segment(
                    a.source,
                    (src_h + start * a.block) * isz,
                    obj,
                    (dst_h + start * bs * hidden) * isz,
                    bs * hidden * isz,
                    count - start,
                    a.block * isz,
                    bs * hidden * isz,
                )
            )
            continue
        for b in range(start, count):
            out.append(token_rows(src_h + b * a.block, dst_h + b * bs * hidden, width, bs))
    return out


def storage_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A flat uint8 tensor over the whole storage of ``tensor`` (same device, no copy)."""
    flat = torch.empty(0, dtype=torch.uint8, device=tensor.device)
    return flat.set_(tensor.untyped_storage())


def execute_plan(
    segments: Sequence[CopySegment],
    storages: Sequence[torch.Tensor],
    objects: Sequence[torch.Tensor],
    to_objects: bool,
) -> None:
    """Run a plan with torch copies (any device; the CPU reference executor).

    Args:
        segments: The plan.
        storages: Flat uint8 tensors over the paged storages (:func:`storage_bytes`).
        objects: Flat uint8 objects, by chunk.
        to_objects: True for a store (paged -> objects), False for a retrieve.
    """
    for s in segments:
        src = storages[s.source].as_strided(
            (s.height, s.width), (s.src_pitch, 1), storages[s.source].storage_offset() + s.src
        )
        dst = objects[s.obj].as_strided(
            (s.height, s.width), (s.dst_pitch, 1), objects[s.obj].storage_offset() + s.dst
        )
        if to_objects:
            dst.copy_(src)
        else:
            src.copy_(dst)
