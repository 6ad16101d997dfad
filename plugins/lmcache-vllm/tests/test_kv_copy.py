"""Copies between vLLM 0.32+'s paged KV views and upstream's L1 object layout."""

from __future__ import annotations

import pytest
import torch
from lmcache_vllm.harness.worker_process import allocate_kv
from lmcache_vllm.kv_copy import gather_chunk, geometry_of, scatter_chunk

LAYERS, BLOCKS, HEADS, BLOCK, HEAD = 3, 10, 2, 4, 8


@pytest.mark.parametrize("layout", ["LBHNC", "LBNHC"])
def test_object_layout_is_kv_layers_tokens_hidden(layout: str) -> None:
    kv = allocate_kv(LAYERS, BLOCKS, HEADS, BLOCK, HEAD, layout)
    layers = list(kv.values())
    for layer in layers:
        layer.copy_(torch.randn_like(layer))
    geometry = geometry_of(layers, BLOCK)
    assert (geometry.num_heads, geometry.head_size) == (HEADS, HEAD)
    blocks = [7, 2]
    out = torch.empty(geometry.object_shape(2 * BLOCK))
    gather_chunk(layers, geometry, blocks, out)
    for number, layer in enumerate(layers):
        for t in range(2 * BLOCK):
            page, slot = blocks[t // BLOCK], t % BLOCK
            for h in range(HEADS):
                cell = layer[page, h, slot]
                span = slice(h * HEAD, (h + 1) * HEAD)
                assert torch.equal(out[0, number, t, span], cell[:HEAD])
                assert torch.equal(out[1, number, t, span], cell[HEAD:])


@pytest.mark.parametrize("layout", ["LBHNC", "LBNHC"])
def test_scatter_round_trips_and_respects_skipped_blocks(layout: str) -> None:
    source = list(allocate_kv(LAYERS, BLOCKS, HEADS, BLOCK, HEAD, layout).values())
    for layer in source:
        layer.copy_(torch.randn_like(layer))
    geometry = geometry_of(source, BLOCK)
    obj = torch.empty(geometry.object_shape(2 * BLOCK))
    gather_chunk(source, geometry, [1, 3], obj)
    target = list(allocate_kv(LAYERS, BLOCKS, HEADS, BLOCK, HEAD, layout).values())
    scatter_chunk(target, geometry, [5, 6], obj, skip_blocks=1)
    for src, dst in zip(source, target, strict=True):
        assert torch.equal(dst[6], src[3])
        assert torch.count_nonzero(dst[5]) == 0, "a skipped block was overwritten"
        assert torch.count_nonzero(dst[0]) == 0


def test_unsupported_views_are_refused_with_the_shape() -> None:
    with pytest.raises(ValueError, match=r"\[2, 10, 4, 2, 8\]"):
        geometry_of([torch.zeros(2, 10, 4, 2, 8)], 4)
    with pytest.raises(ValueError, match="block_size=16"):
        geometry_of([torch.zeros(10, 2, 4, 16)], 16)
    with pytest.raises(ValueError, match="no KV cache"):
        geometry_of([], 4)
