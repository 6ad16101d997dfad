"""The K re-rotation of a retrieve, batched: one table gather per request, a few passes per chunk.

:func:`~lmcache_engine_blend.rope.rerotate` describes the math. This is the fast
form the retrieve uses. For a request it gathers the cos/sin rows of every moved
token's old and new position once and folds them into the difference rotation,
kept as one complex number per token and frequency (``cos_d + i sin_d``:
``[tokens, rot/2]`` complex64, small). Each chunk's K is then rotated by a few
torch calls, each over all its layers, tokens and heads at once, into an fp32
scratch reused for every chunk of the request; the stored K (the L1 object) is
only read, and the result is rounded once to the KV dtype:

* GPT-J's pairs ``(2i, 2i + 1)`` are adjacent: the rotary part is copied into
  the scratch as complex pairs, multiplied in place by the tables, copied back
  (three passes);
* NeoX's pairs ``(i, i + rot/2)`` are the two halves of the rotary part:
  ``[x | y] * [c | c] + [y | x] * [-s | s]`` (the conversion, the half swap, a
  multiply and an ``addcmul``, the copy back: five passes, each over whole
  contiguous halves). Interleaving the halves into complex pairs instead takes
  two strided copies, measured 1.2-1.6x slower at one thread on CPU.

Dims outside the rotary width are copied bit for bit. Nothing here is
CPU-specific: the same calls run on a CUDA tensor (the tables are computed on the
cos/sin cache's device and follow the keys' device). ``out`` may be ``keys``
itself (the device path rotates its staged rows in place).

A loop over chunks rather than one tensor of the whole request: the request's
K would have to be staged into one buffer first (another full pass), and the
scratch stays bounded by one chunk whatever the request's length.
"""

from __future__ import annotations

import torch

from lmcache_engine_blend.rope import KV_QUANTS, GroupRotation


def check_positions(rotation: GroupRotation, lowest: int, end: int) -> None:
    """Refuse positions ``[lowest, end)`` the rotation's cos/sin cache has no rows for.

    Raises:
        ValueError: A position outside the cache (named with the cache's size).
    """
    limit = int(rotation.cache.shape[0])
    if lowest < 0 or end > limit:
        raise ValueError(f"a position is outside the cos/sin cache's {limit} rows")


class RequestRotation:
    """The difference rotations of one request's moved tokens, applied chunk by chunk.

    Args:
        rotation: The group's rotation (its cos/sin cache and geometry).
        old_positions: ``[tokens]`` positions the moved rows were rotated at, in
            the order :meth:`rotate` will be called with them.
        new_positions: ``[tokens]`` positions to rotate them to.
        kv_quant: The fp8 format of uint8 K rows (``""``: none).
        checked: The caller checked the positions already (the device path checks them
            on the host before enqueueing: reading device positions back would stall).

    Raises:
        ValueError: A position beyond the cos/sin cache.
    """

    def __init__(
        self,
        rotation: GroupRotation,
        old_positions: torch.Tensor,
        new_positions: torch.Tensor,
        kv_quant: str = "",
        *,
        checked: bool = False,
    ) -> None:
        cache = rotation.cache
        if not checked:
            for positions in (old_positions, new_positions):
                if positions.numel():
                    check_positions(rotation, int(positions.min()), int(positions.max()) + 1)
        self.rotation = rotation
        self.kv_quant = kv_quant
        half = rotation.width // 2
        # One gather per request for every moved token (old and new rows together).
        wanted = torch.cat((old_positions, new_positions)).to(cache.device, torch.int64)
        rows = cache.index_select(0, wanted)
        count = int(old_positions.numel())
        cos_o, sin_o = rows[:count, :half], rows[:count, half:]
        cos_n, sin_n = rows[count:, :half], rows[count:, half:]
        # The new angle minus the old one, as cos + i sin.
        self.tables = torch.complex(
            (cos_n * cos_o).add_(sin_n * sin_o), (sin_n * cos_o).sub_(cos_n * sin_o)
        )
        self._scratch: torch.Tensor | None = None
        self._swap = torch.tensor([1, 0], device=cache.device)

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
        if rot.neox:
            self._neox(source[..., first:last], target[..., first:last], tables)
            return
        # GPT-J: pairs (2i, 2i + 1) are adjacent, one complex number each.
        pairs = self._buffer(layers * tokens * heads * half * 2, src.device)
        pairs = pairs.view(layers, tokens, heads, half, 2)
        pairs.copy_(source[..., first:last].view(layers, tokens, heads, half, 2))
        torch.view_as_complex(pairs).mul_(tables.view(1, tokens, 1, half))
        target[..., first:last].view(layers, tokens, heads, half, 2).copy_(pairs)

    def _neox(self, source: torch.Tensor, target: torch.Tensor, tables: torch.Tensor) -> None:
        """NeoX pairs ``(i, i + rot/2)``: ``[x | y] * [c | c] + [y | x] * [-s | s]``.

        Every pass reads and writes whole contiguous halves (64 values for a
        128-wide head): interleaving the halves into complex pairs instead
        costs two strided copies, measured slower on CPU.
        """
        layers, tokens, heads, width = source.shape
        half = width // 2
        count = layers * tokens * heads * width
        scratch = self._buffer(2 * count, source.device)
        work = scratch[:count].view(layers, tokens, heads, 2, half)
        swapped = scratch[count:].view(layers, tokens, heads, 2, half)
        work.copy_(source.view(layers, tokens, heads, 2, half))  # to fp32, once
        torch.index_select(work, 3, self._swap.to(source.device), out=swapped)
        cos, sin = tables.real, tables.imag
        work.mul_(torch.stack((cos, cos), dim=1).view(1, tokens, 1, 2, half))
        work.addcmul_(swapped, torch.stack((-sin, sin), dim=1).view(1, tokens, 1, 2, half))
        target.view(layers, tokens, heads, 2, half).copy_(work)  # rounded once

    def _buffer(self, elements: int, device: torch.device) -> torch.Tensor:
        """An fp32 scratch of at least ``elements``, reused across the request's chunks."""
        scratch = self._scratch
        if scratch is None or scratch.numel() < elements or scratch.device != device:
            scratch = torch.empty(elements, dtype=torch.float32, device=device)
            self._scratch = scratch
        return scratch[:elements]
