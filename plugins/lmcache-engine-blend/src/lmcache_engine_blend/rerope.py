"""The K re-rotation of a retrieve, batched: one table gather per request, three passes per chunk.

:func:`~lmcache_engine_blend.rope.rerotate` describes the math. This is the fast
form the retrieve uses. For a request it gathers the cos/sin rows of every moved
token's old and new position once and folds them into the difference rotation,
kept as one complex number per token and frequency (``cos_d + i sin_d``:
``[tokens, rot/2]`` complex64, small). A rotated pair ``(x, y)`` is then the
complex product ``(x + i y) * (cos_d + i sin_d)``, and each chunk's K takes
three passes, each a single torch call over all its layers, tokens and heads:

1. the rotary part of the stored K (the L1 object, only read) into an fp32
   scratch laid out as complex pairs, reused for every chunk of the request
   (for NeoX's ``(i, i + rot/2)`` pairs this copy also interleaves them);
2. one in-place complex multiply by the tables (broadcast over layers and heads);
3. back into the output in the KV dtype (rounded once), de-interleaving for NeoX.

Dims outside the rotary width are copied bit for bit. Nothing here is
CPU-specific: the same calls run on a CUDA tensor (the tables follow the keys'
device). The elementwise form (``x * cos - y * sin`` with ``mul``/``addcmul``)
measured 1.5x slower on CPU: more passes, and mixed-dtype operands leave torch's
vectorised loops.

A loop over chunks rather than one tensor of the whole request: the request's
K would have to be staged into one buffer first (another full pass), and the
scratch stays bounded by one chunk whatever the request's length.
"""

from __future__ import annotations

import torch

from lmcache_engine_blend.rope import KV_QUANTS, GroupRotation


class RequestRotation:
    """The difference rotations of one request's moved tokens, applied chunk by chunk.

    Args:
        rotation: The group's rotation (its cos/sin cache and geometry).
        old_positions: ``[tokens]`` positions the moved rows were rotated at, in
            the order :meth:`rotate` will be called with them.
        new_positions: ``[tokens]`` positions to rotate them to.
        kv_quant: The fp8 format of uint8 K rows (``""``: none).

    Raises:
        ValueError: A position beyond the cos/sin cache.
    """

    def __init__(
        self,
        rotation: GroupRotation,
        old_positions: torch.Tensor,
        new_positions: torch.Tensor,
        kv_quant: str = "",
    ) -> None:
        cache = rotation.cache
        limit = int(cache.shape[0])
        for positions in (old_positions, new_positions):
            if positions.numel() and (int(positions.max()) >= limit or int(positions.min()) < 0):
                raise ValueError(f"a position is outside the cos/sin cache's {limit} rows")
        self.rotation = rotation
        self.kv_quant = kv_quant
        half = rotation.width // 2
        # One gather per request for every moved token (old and new rows together).
        rows = cache.index_select(0, torch.cat((old_positions, new_positions)).to(torch.int64))
        count = int(old_positions.numel())
        cos_o, sin_o = rows[:count, :half], rows[:count, half:]
        cos_n, sin_n = rows[count:, :half], rows[count:, half:]
        # The new angle minus the old one, as cos + i sin.
        self.tables = torch.complex(
            (cos_n * cos_o).add_(sin_n * sin_o), (sin_n * cos_o).sub_(cos_n * sin_o)
        )
        self._scratch: torch.Tensor | None = None

    def rotate(
        self, keys: torch.Tensor, first: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rows ``first..first + tokens`` of the request's moved tokens, rotated.

        Args:
            keys: ``[layers, tokens, hidden]`` K rows in the KV dtype (uint8 for fp8);
                not modified.
            first: Index of ``keys``' first token in the positions given at construction.
            out: Where to write (same shape and dtype as ``keys``), else a new tensor.

        Returns:
            ``out`` (or the new tensor) holding the rotated rows.
        """
        tokens = int(keys.shape[1])
        tables = self.tables[first : first + tokens].to(keys.device)
        if out is None:
            out = torch.empty_like(keys, memory_format=torch.contiguous_format)
        fp8 = KV_QUANTS.get(self.kv_quant) if keys.dtype == torch.uint8 else None
        if fp8 is not None:  # the stored bytes are fp8 values: rotate them as such
            self._apply(keys.view(fp8), out.view(fp8), tables)
        else:
            self._apply(keys, out, tables)
        return out

    def _apply(self, src: torch.Tensor, dst: torch.Tensor, tables: torch.Tensor) -> None:
        rot = self.rotation
        layers, tokens, hidden = src.shape
        heads, half = hidden // rot.head_width, rot.width // 2
        source = src.view(layers, tokens, heads, rot.head_width)
        target = dst.view(layers, tokens, heads, rot.head_width)
        first, last = rot.offset, rot.offset + rot.width
        if first > 0:  # the dims outside the rotary part, as stored
            target[..., :first].copy_(source[..., :first])
        if last < rot.head_width:
            target[..., last:].copy_(source[..., last:])
        pairs = self._buffer(layers * tokens * heads * half * 2, src.device)
        pairs = pairs.view(layers, tokens, heads, half, 2)
        if rot.neox:  # pairs (i, i + rot/2): interleaved by the copy
            stored = source[..., first:last].view(layers, tokens, heads, 2, half).transpose(-1, -2)
            written = target[..., first:last].view(layers, tokens, heads, 2, half).transpose(-1, -2)
        else:  # pairs (2i, 2i + 1): already adjacent
            stored = source[..., first:last].view(layers, tokens, heads, half, 2)
            written = target[..., first:last].view(layers, tokens, heads, half, 2)
        pairs.copy_(stored)
        torch.view_as_complex(pairs).mul_(tables.view(1, tokens, 1, half))
        written.copy_(pairs)

    def _buffer(self, elements: int, device: torch.device) -> torch.Tensor:
        """An fp32 scratch of at least ``elements``, reused across the request's chunks."""
        scratch = self._scratch
        if scratch is None or scratch.numel() < elements or scratch.device != device:
            scratch = torch.empty(elements, dtype=torch.float32, device=device)
            self._scratch = scratch
        return scratch[:elements]
