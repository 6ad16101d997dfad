"""A reference RoPE (as vLLM applies it), independent of any engine's re-rotation.

For tests of engines that re-rotate stored K (the blend engines): the expected
K at a new position is computed here, in fp64, from the raw K.
"""

from __future__ import annotations

import torch


def cos_sin_cache(max_position: int, rot_dim: int, base: float = 10000.0) -> torch.Tensor:
    """The cos/sin cache as vLLM builds it (``[max_position, rot_dim]``: cos, then sin)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim))
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float64), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(torch.float32)


def apply_rope(
    x: torch.Tensor,
    positions: torch.Tensor,
    cache: torch.Tensor,
    *,
    neox: bool,
    head_width: int,
    offset: int = 0,
) -> torch.Tensor:
    """Rotate ``x`` (``[..., tokens, hidden]``) at ``positions``, per head of ``head_width``.

    The rotary dims are ``[offset, offset + rot_dim)`` of each head; computed in fp64.
    """
    rot = cache.shape[1]
    half = rot // 2
    shape = x.shape
    heads = shape[-1] // head_width
    view = x.to(torch.float64).reshape(*shape[:-1], heads, head_width).clone()
    part = view[..., offset : offset + rot]
    rows = cache.to(torch.float64)[positions]
    cos = rows[:, :half].unsqueeze(1)  # [tokens, 1, half]
    sin = rows[:, half:].unsqueeze(1)
    if neox:
        a, b = part[..., :half].clone(), part[..., half:].clone()
        part[..., :half] = a * cos - b * sin
        part[..., half:] = b * cos + a * sin
    else:
        a, b = part[..., 0::2].clone(), part[..., 1::2].clone()
        part[..., 0::2] = a * cos - b * sin
        part[..., 1::2] = b * cos + a * sin
    return view.reshape(shape)
