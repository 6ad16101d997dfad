"""Copies between vLLM's paged KV cache and L1 objects, for ``engine_driven`` transfers.

vLLM 0.32/0.33 gives each attention layer a 4-D view ``[num_blocks, num_kv_heads,
block_size, 2 * head_size]`` over one shared buffer: K and V side by side in the last
dimension, the physical order of the dimensions set by the KV cache layout (``LBHNC``,
``LBNHC``, ``BLHNC``, ...; RFC #42082). Indexing through the view's own strides handles
every layout, so nothing here assumes contiguity.

An L1 object is upstream's ``[2, num_layers, chunk_tokens, num_kv_heads * head_size]``
(K plane, then V plane, tokens-major), so objects written here are byte-identical to
those upstream's connector or an ``lmcache_driven`` worker writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PagedGeometry:
    """The shape of a worker's paged KV cache.

    Attributes:
        num_layers: Attention layers (one view each).
        num_blocks: Blocks per layer.
        num_heads: KV heads.
        block_size: Tokens per block.
        head_size: Elements per head and token, of K (and of V).
        dtype: The KV dtype.
    """

    num_layers: int
    num_blocks: int
    num_heads: int
    block_size: int
    head_size: int
    dtype: torch.dtype

    @property
    def hidden(self) -> int:
        """Elements per token and plane in an object."""
        return self.num_heads * self.head_size

    def object_shape(self, tokens: int) -> tuple[int, int, int, int]:
        """The L1 object of ``tokens`` tokens."""
        return (2, self.num_layers, tokens, self.hidden)

    def object_nbytes(self, tokens: int) -> int:
        """Bytes of that object."""
        return 2 * self.num_layers * tokens * self.hidden * self.dtype.itemsize


def geometry_of(layers: Sequence[torch.Tensor], block_size: int) -> PagedGeometry:
    """Check the layer views and describe them.

    Raises:
        ValueError: No layers, views of different shapes or dtypes, a view that is not
            ``[blocks, heads, block_size, 2 * head_size]``.
    """
    if not layers:
        raise ValueError("register_kv_caches got no KV cache tensors")
    first = layers[0]
    for index, layer in enumerate(layers):
        if layer.shape != first.shape or layer.dtype != first.dtype:
            raise ValueError(
                f"KV cache layer {index} is {list(layer.shape)} {layer.dtype}, layer 0 is "
                f"{list(first.shape)} {first.dtype}: all layers must match (hybrid models "
                "with several KV cache groups are not supported by this connector yet)"
            )
    shape = tuple(first.shape)
    if len(shape) != 4 or shape[2] != block_size or shape[3] % 2:
        raise ValueError(
            f"unsupported KV cache view {list(shape)}: expected vLLM 0.32+'s "
            f"[num_blocks, num_kv_heads, block_size={block_size}, 2 * head_size] "
            "(MLA and the legacy [2, num_blocks, ...] layout are not supported)"
        )
    return PagedGeometry(
        num_layers=len(layers),
        num_blocks=shape[0],
        num_heads=shape[1],
        block_size=block_size,
        head_size=shape[3] // 2,
        dtype=first.dtype,
    )


def _index(block_ids: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(block_ids), dtype=torch.long, device=device)


def gather_chunk(
    layers: Sequence[torch.Tensor],
    geometry: PagedGeometry,
    block_ids: Sequence[int],
    out: torch.Tensor,
) -> None:
    """Copy the blocks of one chunk into the object ``out``.

    Args:
        layers: The layer views.
        geometry: Their geometry.
        block_ids: The chunk's blocks, in token order.
        out: ``[2, L, len(block_ids) * block_size, hidden]`` of the KV dtype (a slot of the
            L1 pool, or a local buffer).
    """
    tokens = len(block_ids) * geometry.block_size
    heads, size = geometry.num_heads, geometry.head_size
    index = _index(block_ids, layers[0].device)
    for number, layer in enumerate(layers):
        pages = layer.index_select(0, index)  # [k, H, N, 2D]
        per_token = pages.permute(0, 2, 1, 3).reshape(tokens, heads, 2, size)
        out[0, number].view(tokens, heads, size).copy_(per_token[:, :, 0])
        out[1, number].view(tokens, heads, size).copy_(per_token[:, :, 1])


def scatter_chunk(
    layers: Sequence[torch.Tensor],
    geometry: PagedGeometry,
    block_ids: Sequence[int],
    source: torch.Tensor,
    skip_blocks: int = 0,
) -> None:
    """Copy one object back into the chunk's blocks, leaving the first ``skip_blocks``.

    Args:
        layers: The layer views.
        geometry: Their geometry.
        block_ids: The chunk's blocks, in token order.
        source: The object, ``[2, L, len(block_ids) * block_size, hidden]``.
        skip_blocks: Leading blocks the engine already holds (prefix-cache hits).
    """
    targets = list(block_ids)[skip_blocks:]
    if not targets:
        return
    block = geometry.block_size
    tokens = len(targets) * block
    first = skip_blocks * block
    heads, size = geometry.num_heads, geometry.head_size
    index = _index(targets, layers[0].device)
    for number, layer in enumerate(layers):
        keys = source[0, number, first : first + tokens].reshape(tokens, heads, size)
        values = source[1, number, first : first + tokens].reshape(tokens, heads, size)
        per_token = torch.stack((keys, values), dim=2)  # [T, H, 2, D]
        pages = per_token.reshape(len(targets), block, heads, 2 * size).permute(0, 2, 1, 3)
        layer.index_copy_(0, index, pages.to(device=layer.device, dtype=layer.dtype))
