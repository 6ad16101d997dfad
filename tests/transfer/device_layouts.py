"""vLLM's registered KV tensor layouts, each with a naive accessor of one block's tokens.

Shared by the CPU copy-plan tests and the two-process GPU tests: the accessor indexes the
*registered* tensors by hand (not through the canonical views), so a wrong view, stride or
merge shows up as a byte mismatch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Block = Callable[[list[torch.Tensor], int, int, int], torch.Tensor]
"""(registered tensors, layer, kv, block id) -> that block's [block_size, hidden] tokens."""

Layout = tuple[tuple[int, ...], int, dict[str, str], Block]
"""(shape of each registered tensor, how many tensors, layout hints, naive block accessor)."""


def device_layouts(
    num_blocks: int, block_size: int, heads: int, dim: int, layers: int
) -> dict[str, Layout]:
    """Every device layout the server accepts, for one geometry, by name."""
    nb, bs = num_blocks, block_size

    def nhd(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(bs, -1)

    def hnd(t: torch.Tensor) -> torch.Tensor:
        return t.permute(1, 0, 2).reshape(bs, -1)

    return {
        "flash_nhd": ((2, nb, bs, heads, dim), layers, {}, lambda ts, ly, k, b: nhd(ts[ly][k, b])),
        "flash_hnd": (
            (2, nb, heads, bs, dim),
            layers,
            {"kv_layout": "HND"},
            lambda ts, ly, k, b: hnd(ts[ly][k, b]),
        ),
        "flashinfer_nhd": (
            (nb, 2, bs, heads, dim),
            layers,
            {"kv_layout": "NHD"},
            lambda ts, ly, k, b: nhd(ts[ly][b, k]),
        ),
        "flashinfer_hnd": (
            (nb, 2, heads, bs, dim),
            layers,
            {"kv_layout": "HND"},
            lambda ts, ly, k, b: hnd(ts[ly][b, k]),
        ),
        "mla": ((nb, bs, dim), layers, {}, lambda ts, ly, k, b: ts[ly][b]),
        "cross_layer_nhd": (
            (nb, layers, 2, bs, heads, dim),
            1,
            {},
            lambda ts, ly, k, b: nhd(ts[0][b, ly, k]),
        ),
        "cross_layer_hnd": (
            (nb, layers, 2, heads, bs, dim),
            1,
            {"kv_layout": "BLHNC"},
            lambda ts, ly, k, b: hnd(ts[0][b, ly, k]),
        ),
    }
