"""K-only re-rotation: K at p rotated to q equals K computed at q (bf16 tolerance)."""

from __future__ import annotations

import pytest
import torch
from lmcache_engine_blend.rope import build_state, normalize_cache, rerotate

from lmcache_core.protocol.errors import BadRequestError
from lmcache_core.testing.rope_reference import apply_rope, cos_sin_cache

LAYERS, TOKENS = 2, 16


def state(cache: torch.Tensor, *, neox: bool, head: int, group_rot=(), kv_quant: str = ""):
    return build_state([cache], head, neox, [], list(group_rot), [], kv_quant, 1)


@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("rot_dim", [64, 32], ids=["full", "partial"])
def test_rerotated_k_equals_k_computed_at_the_new_position(neox: bool, rot_dim: int) -> None:
    head, heads = 64, 4
    cache = cos_sin_cache(4096, rot_dim)
    raw = torch.randn(LAYERS, TOKENS, heads * head, dtype=torch.float64)
    old = torch.arange(256, 256 + TOKENS)
    new = torch.arange(37, 37 + TOKENS)
    stored = apply_rope(raw, old, cache, neox=neox, head_width=head).to(torch.bfloat16)
    expected = apply_rope(raw, new, cache, neox=neox, head_width=head)
    rope = state(cache, neox=neox, head=head)
    rotation = rope.rotation(0, heads * head, 2, torch.bfloat16)
    assert rotation is not None
    got = rerotate(stored, rotation, old, new)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.to(torch.float64), expected, atol=3e-2, rtol=1.6e-2)
    # Dims outside the rotary width are copied bit for bit.
    if rot_dim < head:
        view = got.view(LAYERS, TOKENS, heads, head)[..., rot_dim:]
        assert torch.equal(view, stored.view(LAYERS, TOKENS, heads, head)[..., rot_dim:])


def test_the_wrong_style_is_far_off() -> None:
    """The check above can fail: rotating with the other pairing is not within tolerance."""
    head, heads = 64, 2
    cache = cos_sin_cache(4096, head)
    raw = torch.randn(LAYERS, TOKENS, heads * head, dtype=torch.float64)
    old, new = torch.arange(512, 512 + TOKENS), torch.arange(5, 5 + TOKENS)
    stored = apply_rope(raw, old, cache, neox=True, head_width=head).to(torch.bfloat16)
    expected = apply_rope(raw, new, cache, neox=True, head_width=head)
    rotation = state(cache, neox=False, head=head).rotation(0, heads * head, 2, torch.bfloat16)
    assert rotation is not None
    got = rerotate(stored, rotation, old, new).to(torch.float64)
    assert (got - expected).abs().max() > 0.5


def test_mla_group_rot_rotates_only_the_rope_tail_of_the_latent() -> None:
    content, rope_dim = 96, 32
    cache = cos_sin_cache(2048, rope_dim)
    raw = torch.randn(LAYERS, TOKENS, content + rope_dim, dtype=torch.float64)
    old, new = torch.arange(300, 300 + TOKENS), torch.arange(40, 40 + TOKENS)
    width = content + rope_dim
    stored = apply_rope(raw, old, cache, neox=False, head_width=width, offset=content)
    stored = stored.to(torch.float32)
    expected = apply_rope(raw, new, cache, neox=False, head_width=width, offset=content)
    rope = state(cache, neox=False, head=width, group_rot=[[content, rope_dim]])
    rotation = rope.rotation(0, width, 1, torch.float32)
    assert rotation is not None and rotation.offset == content
    got = rerotate(stored, rotation, old, new)
    torch.testing.assert_close(got.to(torch.float64), expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(got[..., :content], stored[..., :content])
    with pytest.raises(ValueError, match="key-only"):
        rope.rotation(0, width, 2, torch.float32)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_k_is_dequantised_rotated_and_requantised(fmt: str) -> None:
    head = 32
    fp8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[fmt]
    cache = cos_sin_cache(2048, head)
    raw = torch.randn(LAYERS, TOKENS, 2 * head, dtype=torch.float64)
    old, new = torch.arange(600, 600 + TOKENS), torch.arange(3, 3 + TOKENS)
    stored = apply_rope(raw, old, cache, neox=True, head_width=head).to(fp8).view(torch.uint8)
    expected = apply_rope(raw, new, cache, neox=True, head_width=head)
    rope = state(cache, neox=True, head=head, kv_quant=fmt)
    rotation = rope.rotation(0, 2 * head, 2, torch.uint8)
    assert rotation is not None
    got = rerotate(stored, rotation, old, new, fmt).view(fp8).to(torch.float64)
    tolerance = 0.3 if fmt == "fp8_e5m2" else 0.15
    assert (got - expected).abs().max() <= tolerance * max(1.0, float(expected.abs().max()))


def test_groups_without_rotation() -> None:
    cache = cos_sin_cache(128, 32)
    # NoPE: no caches registered.
    assert build_state([], 32, True, [], [], [], "", 1).rotation(0, 64, 2, torch.bfloat16) is None
    # A -1 cache.
    assert (
        build_state([cache], 32, True, [-1], [], [], "", 1).rotation(0, 64, 2, torch.bfloat16)
        is None
    )
    # An empty group_rot entry.
    assert (
        state(cache, neox=True, head=32, group_rot=[[]]).rotation(0, 64, 2, torch.bfloat16) is None
    )
    # uint8 without kv_quant under legacy geometry cannot be rotated.
    with pytest.raises(ValueError, match="kv_quant"):
        state(cache, neox=True, head=32).rotation(0, 64, 2, torch.uint8)


def test_positions_beyond_the_cache_are_refused() -> None:
    cache = cos_sin_cache(64, 32)
    rotation = state(cache, neox=True, head=32).rotation(0, 32, 2, torch.float32)
    assert rotation is not None
    keys = torch.zeros(1, 4, 32)
    with pytest.raises(ValueError, match="outside"):
        rerotate(keys, rotation, torch.arange(60, 64), torch.arange(62, 66))


def test_mscale_is_divided_out() -> None:
    cache = cos_sin_cache(64, 32)
    torch.testing.assert_close(normalize_cache(cache * 2), cache)
    torch.testing.assert_close(normalize_cache(cache), cache)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kv_quant": "int4"}, "kv_quant"),
        ({"group_rot": [[0, 0]]}, "group_rot"),
        ({"group_rot": [[1, 2, 3]]}, "group_rot"),
        ({"group_to_cache": [3]}, "group_to_cache"),
    ],
)
def test_invalid_registrations_are_refused(kwargs: dict, message: str) -> None:
    args = {"group_to_cache": [], "group_rot": [], "kv_quant": ""} | kwargs
    with pytest.raises(BadRequestError, match=message):
        build_state(
            [cos_sin_cache(8, 4)],
            4,
            True,
            args["group_to_cache"],
            args["group_rot"],
            [],
            args["kv_quant"],
            1,
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rerotate_leaves_its_input_untouched(dtype: torch.dtype) -> None:
    # fp32 K once came back as the input itself, rotated in place (the L1 object).
    head, heads = 64, 2
    cache = cos_sin_cache(4096, head)
    stored = torch.randn(LAYERS, TOKENS, heads * head).to(dtype)
    before = stored.clone()
    rotation = state(cache, neox=True, head=head).rotation(0, heads * head, 2, dtype)
    assert rotation is not None
    got = rerotate(stored, rotation, torch.arange(100, 100 + TOKENS), torch.arange(TOKENS))
    assert torch.equal(stored, before)
    assert got.data_ptr() != stored.data_ptr()
    assert not torch.equal(got, stored)
