"""KV layout detection and the object geometry."""

from __future__ import annotations

import pytest
import torch

from lmcache_core.transfer import (
    KVFormat,
    KVLayout,
    detect_layout,
    dtype_from_name,
    dtype_name,
    layout_from_engine_driven,
)


def _layers(shape: tuple[int, ...], n: int = 3, dtype: torch.dtype = torch.bfloat16):
    return [torch.zeros(shape, dtype=dtype) for _ in range(n)]


def test_nhd_is_the_default():
    layout = detect_layout(_layers((2, 10, 16, 8, 128)), None)
    assert layout == KVLayout(KVFormat.NHD, 3, 10, 16, 8, 128, torch.bfloat16)
    assert detect_layout(_layers((2, 10, 16, 8, 128)), {}) == layout
    assert detect_layout(_layers((2, 10, 16, 8, 128)), {"kv_layout": "NHD"}) == layout
    assert layout.kv_size == 2
    assert layout.hidden == 1024
    assert layout.layer_shape() == (2, 10, 16, 8, 128)


def test_hnd_from_hint():
    layout = detect_layout(_layers((2, 10, 8, 16, 128)), {"kv_layout": "HND"})
    assert layout == KVLayout(KVFormat.HND, 3, 10, 16, 8, 128, torch.bfloat16)
    assert layout.layer_shape() == (2, 10, 8, 16, 128)
    assert detect_layout(_layers((2, 10, 8, 16, 128)), {"kv_layout": "hnd"}) == layout


def test_mla_from_3d_tensors():
    layout = detect_layout(_layers((10, 16, 576), dtype=torch.float16), {"kv_layout": "NHD"})
    assert layout == KVLayout(KVFormat.MLA, 3, 10, 16, 1, 576, torch.float16)
    assert layout.kv_size == 1
    assert layout.hidden == 576
    assert layout.object_shape(256) == (1, 3, 256, 576)
    assert layout.layer_shape() == (10, 16, 576)


def test_object_geometry_is_upstreams():
    layout = KVLayout(KVFormat.NHD, 32, 100, 16, 8, 128, torch.bfloat16)
    assert layout.object_shape(256) == (2, 32, 256, 1024)
    assert layout.object_nbytes(256) == 32 << 20  # Llama-3-8B: 32 MiB per 256-token chunk
    assert layout.blocks_per_chunk(256) == 16
    for bad in (0, -16, 100):
        with pytest.raises(ValueError, match="multiple of the block size 16"):
            layout.blocks_per_chunk(bad)


def test_layers_must_agree():
    layers = _layers((2, 10, 16, 8, 128))
    layers.append(torch.zeros((2, 11, 16, 8, 128), dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"same shape and dtype.*layer 3 is \[2, 11, 16, 8, 128\]"):
        detect_layout(layers, None)
    layers = _layers((2, 10, 16, 8, 128))
    layers[1] = layers[1].float()
    with pytest.raises(ValueError, match=r"layer 1 is .* float32"):
        detect_layout(layers, None)


@pytest.mark.parametrize(
    "shape", [(10, 2, 8, 16, 128), (2, 10, 16, 1024), (16, 128), (2, 10, 16, 8, 128, 1)]
)
def test_unsupported_shapes_are_named(shape):
    with pytest.raises(ValueError, match=r"unsupported KV tensor shape \[" + str(shape[0])):
        detect_layout(_layers(shape), None)


def test_empty_dimension_and_no_layers():
    with pytest.raises(ValueError, match="empty"):
        detect_layout(_layers((2, 0, 16, 8, 128)), None)
    with pytest.raises(ValueError, match="zero layer tensors"):
        detect_layout([], None)


@pytest.mark.parametrize("hint", ["BLHNC", "BLNHC", 7])
def test_unsupported_hint(hint):
    with pytest.raises(ValueError, match="unsupported kv_layout hint"):
        detect_layout(_layers((2, 10, 16, 8, 128)), {"kv_layout": hint})


def test_layout_validates_its_fields():
    with pytest.raises(ValueError, match="num_layers"):
        KVLayout(KVFormat.NHD, 0, 10, 16, 8, 128, torch.bfloat16)
    with pytest.raises(ValueError, match="num_blocks"):
        KVLayout(KVFormat.NHD, 1, -1, 16, 8, 128, torch.bfloat16)
    with pytest.raises(ValueError, match="block_size"):
        KVLayout(KVFormat.NHD, 1, 10, True, 8, 128, torch.bfloat16)
    with pytest.raises(ValueError, match="MLA"):
        KVLayout(KVFormat.MLA, 1, 10, 16, 8, 128, torch.bfloat16)
    with pytest.raises(ValueError, match="unknown KV format"):
        KVLayout("NDH", 1, 10, 16, 8, 128, torch.bfloat16)
    assert KVLayout("HND", 1, 10, 16, 8, 128, torch.bfloat16).format is KVFormat.HND


def test_engine_driven_layout():
    layout = layout_from_engine_driven(16, 32, 1024, "bfloat16", False, 256)
    assert layout.format is KVFormat.NHD
    assert layout.object_shape(256) == (2, 32, 256, 1024)
    assert layout.num_blocks == 16
    assert layout.dtype is torch.bfloat16
    mla = layout_from_engine_driven(16, 61, 576, "torch.bfloat16", True, None)
    # Upstream's engine-driven MLA objects are [L, slots, H]: the same bytes as [1, L, slots, H].
    assert mla.object_shape(64) == (1, 61, 64, 576)
    assert mla.num_blocks == 0
    with pytest.raises(ValueError, match="multiple of the block"):
        layout_from_engine_driven(16, 32, 1024, "bfloat16", False, 100)
    with pytest.raises(ValueError, match="unknown dtype"):
        layout_from_engine_driven(16, 32, 1024, "bfloat17", False, 256)


def test_dtype_names():
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.int8, torch.uint8):
        assert dtype_from_name(dtype_name(dtype)) is dtype
    assert dtype_name(torch.bfloat16) == "bfloat16"
    for bad in ("Tensor", "nn", "float32.foo", "", "__name__"):
        with pytest.raises(ValueError, match="unknown dtype"):
            dtype_from_name(bad)
