"""KV cache layouts: how a worker's paged KV cache and an L1 object are shaped.

Two layouts meet in the transfer path:

* the worker's **paged KV cache**, one tensor per layer, in the engine's own format
  (vLLM: NHD, HND or MLA, see :class:`KVFormat`);
* the **L1 object** of one chunk, ``[kv_size, num_layers, tokens, hidden]`` in the KV dtype,
  tokens-major. This is upstream LMCache's object layout, so the bytes of an object are the same
  whichever server stored them (and L2 objects written by one can be read by the other).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

__all__ = [
    "KVFormat",
    "KVLayout",
    "detect_layout",
    "dtype_from_name",
    "dtype_name",
    "layout_from_engine_driven",
]


class KVFormat(StrEnum):
    """The per-layer format of a paged KV cache.

    Attributes:
        NHD: vLLM's default (FlashAttention): ``[2, num_blocks, block_size, num_heads, head_dim]``.
        HND: ``[2, num_blocks, num_heads, block_size, head_dim]`` (vLLM with
            ``kv_layout="HND"``, for example FlashInfer on some GPUs).
        MLA: multi-head latent attention, K and V fused: ``[num_blocks, block_size, head_dim]``.
    """

    NHD = "NHD"
    HND = "HND"
    MLA = "MLA"


@dataclass(frozen=True)
class KVLayout:
    """The geometry of one worker's KV cache and of the L1 objects made from it.

    Attributes:
        format: The per-layer tensor format.
        num_layers: Number of KV layers (one tensor each).
        num_blocks: Blocks per layer tensor (for the engine-driven path, where the server never
            sees the paged cache, the blocks one object spans; see
            :func:`layout_from_engine_driven`).
        block_size: Tokens per block.
        num_heads: KV heads (1 for MLA).
        head_dim: Elements per head and token.
        dtype: The KV dtype.
    """

    format: KVFormat
    num_layers: int
    num_blocks: int
    block_size: int
    num_heads: int
    head_dim: int
    dtype: torch.dtype

    def __post_init__(self) -> None:
        try:
            # Accept the plain string too ("NHD"): the format is compared by identity later.
            object.__setattr__(self, "format", KVFormat(self.format))
        except ValueError:
            raise ValueError(f"unknown KV format {self.format!r}") from None
        # A layout is built from client input (registration); a zero or negative dimension
        # would surface later as a confusing reshape error deep in a copy, so refuse it here.
        for field in ("num_layers", "block_size", "num_heads", "head_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"KVLayout.{field} must be a positive int, got {value!r}")
        if (
            not isinstance(self.num_blocks, int)
            or isinstance(self.num_blocks, bool)
            or self.num_blocks < 0
        ):
            raise ValueError(f"KVLayout.num_blocks must be an int >= 0, got {self.num_blocks!r}")
        if not isinstance(self.dtype, torch.dtype):
            raise ValueError(f"KVLayout.dtype must be a torch.dtype, got {self.dtype!r}")
        if self.format is KVFormat.MLA and self.num_heads != 1:
            raise ValueError(f"an MLA layout has num_heads == 1, got {self.num_heads}")

    @property
    def kv_size(self) -> int:
        """Planes per layer: 2 (K and V), or 1 for MLA (fused)."""
        return 1 if self.format is KVFormat.MLA else 2

    @property
    def hidden(self) -> int:
        """Elements per token and plane: ``num_heads * head_dim``."""
        return self.num_heads * self.head_dim

    @property
    def itemsize(self) -> int:
        """Bytes per element of :attr:`dtype`."""
        return self.dtype.itemsize

    def layer_shape(self) -> tuple[int, ...]:
        """The shape one layer's paged KV tensor has in this layout."""
        if self.format is KVFormat.NHD:
            return (2, self.num_blocks, self.block_size, self.num_heads, self.head_dim)
        if self.format is KVFormat.HND:
            return (2, self.num_blocks, self.num_heads, self.block_size, self.head_dim)
        return (self.num_blocks, self.block_size, self.head_dim)

    def object_shape(self, tokens: int) -> tuple[int, int, int, int]:
        """The shape of the L1 object holding ``tokens`` tokens.

        Args:
            tokens: Tokens in the object (the chunk size, fewer for a last partial chunk).

        Returns:
            ``(kv_size, num_layers, tokens, hidden)``, upstream's object layout.
        """
        return (self.kv_size, self.num_layers, tokens, self.hidden)

    def object_nbytes(self, tokens: int) -> int:
        """Bytes of the L1 object holding ``tokens`` tokens."""
        return self.kv_size * self.num_layers * tokens * self.hidden * self.itemsize

    def blocks_per_chunk(self, chunk_tokens: int) -> int:
        """Blocks one chunk of ``chunk_tokens`` tokens spans.

        Raises:
            ValueError: ``chunk_tokens`` is not a positive multiple of ``block_size``.
        """
        if chunk_tokens <= 0 or chunk_tokens % self.block_size:
            raise ValueError(
                f"chunk size {chunk_tokens} is not a positive multiple of the block size "
                f"{self.block_size}"
            )
        return chunk_tokens // self.block_size


def dtype_name(dtype: torch.dtype) -> str:
    """The wire name of a dtype: torch's name without ``torch.`` (``"bfloat16"``)."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """Resolve a dtype name as sent on the wire (``"bfloat16"``; ``"torch.bfloat16"`` too).

    Raises:
        ValueError: The name is not a torch dtype.
    """
    attr = name.removeprefix("torch.") if isinstance(name, str) else ""
    # getattr on the torch module would also find functions and classes; only a real dtype
    # object is accepted, and only by a plain identifier (no dotted paths).
    value = getattr(torch, attr, None) if attr.isidentifier() else None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return value


def _hinted_format(layout_hints: Mapping[str, Any] | None) -> KVFormat:
    """The paged format named by the ``kv_layout`` hint (NHD when absent)."""
    hint = (layout_hints or {}).get("kv_layout")
    if hint is None or hint == "":
        return KVFormat.NHD
    if isinstance(hint, str) and hint.upper() in (KVFormat.NHD, KVFormat.HND):
        return KVFormat(hint.upper())
    raise ValueError(
        f"unsupported kv_layout hint {hint!r}: this server handles 'NHD' and 'HND' (and MLA, "
        "detected from 3-D tensors)"
    )


def detect_layout(
    tensors: Sequence[torch.Tensor], layout_hints: Mapping[str, Any] | None = None
) -> KVLayout:
    """Detect the layout of a worker's per-layer KV tensors.

    Args:
        tensors: One tensor per layer, in the worker's layer order, all of the same shape and
            dtype.
        layout_hints: The registration's layout hints; ``{"kv_layout": "HND"}`` selects HND for
            5-D tensors, NHD is the default. MLA is recognised by a 3-D tensor whatever the hint.

    Returns:
        The layout.

    Raises:
        ValueError: No tensors, tensors that differ in shape or dtype, an unsupported shape or
            an unsupported hint. The message names the offending shape or hint.
    """
    if len(tensors) == 0:
        raise ValueError("cannot detect a KV layout from zero layer tensors")
    first = tensors[0]
    shape = tuple(first.shape)
    for i, tensor in enumerate(tensors):
        if tuple(tensor.shape) != shape or tensor.dtype != first.dtype:
            raise ValueError(
                f"all KV layer tensors must have the same shape and dtype: layer 0 is "
                f"{list(shape)} {dtype_name(first.dtype)}, layer {i} is "
                f"{list(tensor.shape)} {dtype_name(tensor.dtype)}"
            )
    num_layers = len(tensors)
    if len(shape) == 3:
        num_blocks, block_size, head_dim = shape
        fmt = KVFormat.MLA
        num_heads = 1
    elif len(shape) == 5 and shape[0] == 2:
        fmt = _hinted_format(layout_hints)
        if fmt is KVFormat.NHD:
            _, num_blocks, block_size, num_heads, head_dim = shape
        else:
            _, num_blocks, num_heads, block_size, head_dim = shape
    else:
        raise ValueError(
            f"unsupported KV tensor shape {list(shape)}: expected "
            "[2, num_blocks, block_size, num_heads, head_dim] (NHD), "
            "[2, num_blocks, num_heads, block_size, head_dim] (HND) or "
            "[num_blocks, block_size, head_dim] (MLA)"
        )
    if min(shape) <= 0:
        raise ValueError(f"unsupported KV tensor shape {list(shape)}: a dimension is empty")
    return KVLayout(
        format=fmt,
        num_layers=num_layers,
        num_blocks=num_blocks,
        block_size=block_size,
        num_heads=num_heads,
        head_dim=head_dim,
        dtype=first.dtype,
    )


# Positional parameters on purpose: they mirror the registration payload's field order.
def layout_from_engine_driven(
    block_size: int,
    num_layers: int,
    hidden_dim_size: int,
    dtype_str: str,
    use_mla: bool,
    num_physical_slots: int | None,
) -> KVLayout:
    """The layout described by an engine-driven registration payload.

    On the engine-driven path the worker copies between its paged cache and the L1 objects
    itself, so the server only needs the object layout. The payload carries no head split, so
    the layout has one "head" of ``hidden_dim_size`` elements (the object layout only depends on
    ``hidden``), and no paged block count: ``num_blocks`` is the blocks one object spans
    (``num_physical_slots // block_size``), or 0 when a legacy client sent none.

    Upstream stores engine-driven MLA objects as ``[L, slots, H]``, which is byte-identical to
    our ``[1, L, slots, H]``.

    Args:
        block_size: Tokens per block.
        num_layers: KV layers.
        hidden_dim_size: Elements per token and plane (heads x head size).
        dtype_str: The dtype's name (``"bfloat16"``).
        use_mla: Fused K/V (one plane).
        num_physical_slots: Token slots of one object (``blocks_per_chunk * block_size``), or
            ``None`` from legacy clients.

    Returns:
        The layout.

    Raises:
        ValueError: A non-positive size, an unknown dtype, or slots that are not a multiple of
            the block size.
    """
    if num_physical_slots is not None and (
        num_physical_slots <= 0 or block_size <= 0 or num_physical_slots % block_size
    ):
        raise ValueError(
            f"num_physical_slots {num_physical_slots} is not a positive multiple of the block "
            f"size {block_size}"
        )
    return KVLayout(
        format=KVFormat.MLA if use_mla else KVFormat.NHD,
        num_layers=num_layers,
        num_blocks=0 if num_physical_slots is None else num_physical_slots // block_size,
        block_size=block_size,
        num_heads=1,
        head_dim=hidden_dim_size,
        dtype=dtype_from_name(dtype_str),
    )
