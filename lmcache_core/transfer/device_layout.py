"""Layouts of CUDA KV caches as workers register them, and their per-layer canonical views.

A registration is a list of tensors (one per layer, or one cross-layer tensor). This module
checks the shapes and dtype and turns every accepted layout into per-layer **views** (no
copy) in one of the three formats the copy code knows (:class:`~.layout.KVFormat`):

================  ===================================  ===================================
registered as     tensor shape                         per-layer view
================  ===================================  ===================================
flash-attn NHD    ``[2, nb, bs, heads, dim]`` x layers  itself (NHD)
flash-attn HND    ``[2, nb, heads, bs, dim]`` x layers  itself (HND)
flashinfer NHD    ``[nb, 2, bs, heads, dim]`` x layers  ``transpose(0, 1)`` (NHD)
flashinfer HND    ``[nb, 2, heads, bs, dim]`` x layers  ``transpose(0, 1)`` (HND)
MLA               ``[nb, bs, dim]`` x layers            itself (MLA)
cross-layer       one ``[nb, layers, 2, bs, heads, dim]`` ``t[:, l].transpose(0, 1)`` (NHD)
                  (``[nb, layers, 2, heads, bs, dim]`` with the HND hint)
================  ===================================  ===================================

HND is chosen by the ``kv_layout`` hint (``HND``, or vLLM's blocks-first ``BLHNC``); NHD is
the default (``NHD``/``BLNHC``). Blocks-first per-layer views into one allocation only differ
in their strides, which the copies read from the views, so they need nothing special.

Device KV caches are bf16, fp16 or fp8 (e4m3, e5m2); anything else is refused with the
shape named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from lmcache_core.transfer.layout import KVFormat, KVLayout, dtype_name

__all__ = [
    "DEVICE_KV_DTYPES",
    "DeviceKVGeometry",
    "PagedFormat",
    "canonical_layer_views",
    "geometry_for",
]

DEVICE_KV_DTYPES: tuple[torch.dtype, ...] = (
    torch.bfloat16,
    torch.float16,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
)
"""The KV dtypes a CUDA registration may use."""


class PagedFormat(StrEnum):
    """How the registered tensors are arranged (before the per-layer views)."""

    FLASH_ATTN = "flash_attn"
    FLASHINFER = "flashinfer"
    MLA = "mla"
    CROSS_LAYER = "cross_layer"


@dataclass(frozen=True)
class DeviceKVGeometry:
    """An accepted registration's arrangement and the layout of its per-layer views.

    Attributes:
        paged: How the registered tensors are arranged.
        layout: The per-layer views' layout (format, layers, blocks, block size, heads, dim,
            dtype); its object layout is the L1 object layout of the chunks.
    """

    paged: PagedFormat
    layout: KVLayout


def _heads_first(layout_hints: Mapping[str, Any] | None) -> bool:
    hint = (layout_hints or {}).get("kv_layout")
    if hint is None or hint == "":
        return False
    if isinstance(hint, str) and hint.upper() in ("NHD", "BLNHC"):
        return False
    if isinstance(hint, str) and hint.upper() in ("HND", "BLHNC"):
        return True
    raise ValueError(
        f"unsupported kv_layout hint {hint!r}: expected 'NHD', 'HND', 'BLNHC' or 'BLHNC'"
    )


def _expected() -> str:
    return (
        "expected per-layer [2, num_blocks, block_size, heads, dim] (flash-attn NHD; heads "
        "before block_size with kv_layout HND), [num_blocks, 2, ...] (flashinfer), "
        "[num_blocks, block_size, dim] (MLA), or one cross-layer "
        "[num_blocks, num_layers, 2, block_size, heads, dim] tensor"
    )


def geometry_for(
    shapes: Sequence[Sequence[int]],
    dtype: torch.dtype,
    layout_hints: Mapping[str, Any] | None = None,
) -> DeviceKVGeometry:
    """Check a CUDA registration's tensor shapes and dtype and name its layout.

    Args:
        shapes: The registered tensors' shapes, in the worker's order (one per layer, or a
            single cross-layer tensor).
        dtype: Their dtype (all the same).
        layout_hints: The registration's hints (``kv_layout``).

    Raises:
        ValueError: An unsupported dtype, shape or hint, or tensors that differ; the message
            names the shape.
    """
    if not shapes:
        raise ValueError("a CUDA registration needs at least one tensor")
    first = tuple(int(s) for s in shapes[0])
    for index, shape in enumerate(shapes):
        if tuple(shape) != first:
            raise ValueError(
                f"all KV tensors must have one shape: tensor 0 is {list(first)}, tensor "
                f"{index} is {list(shape)}"
            )
    if dtype not in DEVICE_KV_DTYPES:
        allowed = ", ".join(dtype_name(d) for d in DEVICE_KV_DTYPES)
        raise ValueError(
            f"unsupported KV dtype {dtype_name(dtype)} for tensors of shape {list(first)}: "
            f"expected one of {allowed}"
        )
    if min(first, default=0) <= 0:
        raise ValueError(f"unsupported KV tensor shape {list(first)}: a dimension is empty")
    heads_first = _heads_first(layout_hints)
    fmt = KVFormat.HND if heads_first else KVFormat.NHD
    layers = len(shapes)
    if len(first) == 6 and layers == 1 and first[2] == 2:
        nb, layers, _, a, b, dim = first
        paged = PagedFormat.CROSS_LAYER
    elif len(first) == 5 and first[0] == 2:
        _, nb, a, b, dim = first
        paged = PagedFormat.FLASH_ATTN
    elif len(first) == 5 and first[1] == 2:
        nb, _, a, b, dim = first
        paged = PagedFormat.FLASHINFER
    elif len(first) == 3:
        nb, bs, dim = first
        layout = KVLayout(KVFormat.MLA, layers, nb, bs, 1, dim, dtype)
        return DeviceKVGeometry(PagedFormat.MLA, layout)
    else:
        raise ValueError(f"unsupported KV tensor shape {list(first)} x {layers}: {_expected()}")
    heads, bs = (a, b) if heads_first else (b, a)
    return DeviceKVGeometry(paged, KVLayout(fmt, layers, nb, bs, heads, dim, dtype))


def canonical_layer_views(
    tensors: Sequence[torch.Tensor], geometry: DeviceKVGeometry
) -> list[torch.Tensor]:
    """Per-layer views in ``geometry.layout``'s per-layer shape (views only, never copies).

    Args:
        tensors: The registered tensors (as imported), matching ``geometry``.
        geometry: What :func:`geometry_for` said about them.

    Raises:
        ValueError: The tensors do not match the geometry.
    """
    paged, layout = geometry.paged, geometry.layout
    if paged is PagedFormat.CROSS_LAYER:
        if len(tensors) != 1:
            raise ValueError(f"a cross-layer registration has one tensor, got {len(tensors)}")
        views = [tensors[0][:, layer].transpose(0, 1) for layer in range(layout.num_layers)]
    elif paged is PagedFormat.FLASHINFER:
        views = [t.transpose(0, 1) for t in tensors]
    else:
        views = list(tensors)
    want = layout.layer_shape()
    for index, view in enumerate(views):
        if tuple(view.shape) != want or view.dtype != layout.dtype:
            raise ValueError(
                f"layer {index} view is {list(view.shape)} {dtype_name(view.dtype)}, the "
                f"layout needs {list(want)} {dtype_name(layout.dtype)}"
            )
    return views
