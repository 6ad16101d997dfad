"""RoPE state of a worker (``cb_register_rope``) and the K-only re-rotation of reused chunks.

A chunk's stored K was rotated at its old positions ``old_st + t``; reused at
``cur_st + t`` it must carry the rotation of the new positions. Rotating back by
the old angle and forward by the new one, with the worker's own cos/sin cache
(vLLM's ``[max_position, rot_dim]`` rows of ``[cos | sin]``), gives K as the model
would have computed it at the new position, up to rounding. V is never touched.

Pairs: NeoX style rotates ``(i, i + rot/2)``, GPT-J style ``(2i, 2i + 1)``. The
geometry per engine group follows upstream: a declared ``group_rot`` of
``[offset, width]`` rotates ``width`` dims from ``offset`` (``offset > 0`` is MLA's
``[content | rope]`` latent, rotated as one head), an empty entry skips the group,
and no declaration at all rotates the cache's width at offset 0 of every head.
fp8 K (uint8 storage with ``kv_quant``, or a float8 dtype) is dequantised,
rotated and requantised; rotation commutes with a per-tensor scale, so no scale is
needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmcache_core.protocol.errors import BadRequestError

KV_QUANTS = {"": None, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
"""The ``kv_quant`` values upstream accepts, and the fp8 dtype each names."""
ROTATABLE = (torch.float16, torch.bfloat16, torch.float32)
"""K dtypes rotated in place of their own precision (through fp32)."""
MSCALE_TOLERANCE = 1e-3
"""A cache whose rows are not unit rotations by more than this carries a YaRN mscale."""


@dataclass(frozen=True)
class GroupRotation:
    """How one engine group's K is rotated.

    Attributes:
        cache: The cos/sin cache, fp32 ``[max_position, width]`` (first half cos).
        offset: First rotated element within a head (or within the row, for MLA).
        width: Rotated elements per head.
        head_width: Elements per head (the whole row when rotated as one head).
        neox: NeoX pairing, else GPT-J.
    """

    cache: torch.Tensor
    offset: int
    width: int
    head_width: int
    neox: bool


@dataclass(frozen=True)
class RopeState:
    """What ``cb_register_rope`` registered for one worker."""

    head_size: int
    is_neox: bool
    caches: tuple[torch.Tensor, ...]
    group_to_cache: tuple[int, ...]
    group_rot: tuple[tuple[int, int] | None, ...] | None
    group_head_size: tuple[int, ...]
    kv_quant: str

    def rotation(
        self, group: int, hidden: int, kv_size: int, dtype: torch.dtype
    ) -> GroupRotation | None:
        """The rotation of engine group ``group`` with rows of ``hidden`` elements, or None.

        None means the group is copied without rotation: NoPE (no caches), a
        ``-1`` cache, an empty ``group_rot`` entry, or an integer (index) group
        under a declared ``group_rot``.

        Raises:
            ValueError: A geometry no rotation can be built for (the retrieve fails).
        """
        if not self.caches:
            return None
        index = self.group_to_cache[group] if self.group_to_cache else 0
        if index < 0:
            return None
        cache = self.caches[index]
        head = self.group_head_size[group] if self.group_head_size else self.head_size
        declared = self._declared(group, dtype)
        if declared is None:
            return None
        offset, width = declared if declared else (0, int(cache.shape[1]))
        if dtype == torch.uint8 and not self.kv_quant:
            raise ValueError("a uint8 K plane needs kv_quant fp8_e4m3 or fp8_e5m2 to be rotated")
        if dtype not in (*ROTATABLE, torch.uint8, *(d for d in KV_QUANTS.values() if d)):
            raise ValueError(f"K dtype {dtype} has no re-RoPE path")
        if int(cache.shape[1]) != width:
            raise ValueError(f"the cos/sin cache is {cache.shape[1]} wide, the rotation {width}")
        if width % 2:
            raise ValueError(f"the rotary width {width} is odd")
        if offset > 0:  # MLA: [content | rope] latent rotated as one head
            if kv_size != 1 or offset + width != hidden:
                raise ValueError(
                    f"group_rot [{offset}, {width}] needs a key-only row of {offset + width} "
                    f"elements, got kv_size {kv_size}, {hidden}"
                )
            return GroupRotation(cache, offset, width, hidden, self.is_neox)
        if head <= 0 or hidden % head or width > head:
            raise ValueError(f"rows of {hidden} elements are not heads of {head} (rotary {width})")
        return GroupRotation(cache, 0, width, head, self.is_neox)

    def _declared(self, group: int, dtype: torch.dtype) -> tuple[int, int] | tuple[()] | None:
        """The group's declared ``(offset, width)``, ``()`` without a declaration, None: skip."""
        if self.group_rot is None:
            return ()
        rot = self.group_rot[group] if group < len(self.group_rot) else None
        if rot is None:
            return None
        if not (dtype.is_floating_point or self.kv_quant):
            return None  # an index cache (uint8) under a declared map: upstream skips it
        return rot


def normalize_cache(cache: torch.Tensor) -> torch.Tensor:
    """A private fp32 copy of a cos/sin cache, as a pure rotation.

    YaRN and longrope bake an attention scale ``m`` into the cache; dividing by
    ``m = sqrt(mean(cos**2 + sin**2))`` leaves the rotation (as upstream does).

    Raises:
        BadRequestError: Not a 2-D cache of even width.
    """
    if cache.dim() != 2 or cache.shape[1] % 2 or cache.shape[0] == 0 or cache.shape[1] == 0:
        raise BadRequestError(
            f"a cos/sin cache is [max_position, even rot_dim], got {list(cache.shape)}"
        )
    values = cache.detach().to(torch.float32).clone()
    half = values.shape[1] // 2
    scale = float(torch.sqrt((values[:, :half] ** 2 + values[:, half:] ** 2).mean()))
    if abs(scale - 1.0) >= MSCALE_TOLERANCE and scale > 0:
        values /= scale
    return values


def build_state(
    caches: Sequence[torch.Tensor],
    head_size: int,
    is_neox: bool,
    group_to_cache: Sequence[int],
    group_rot: Sequence[Sequence[int]],
    group_head_size: Sequence[int],
    kv_quant: str,
    num_groups: int,
) -> RopeState:
    """Validate a ``cb_register_rope`` as upstream does and build the state.

    Raises:
        BadRequestError: An invalid registration (named).
    """
    if kv_quant not in KV_QUANTS:
        raise BadRequestError(f"kv_quant {kv_quant!r} is not one of {sorted(KV_QUANTS)}")
    if head_size <= 0:
        raise BadRequestError(f"head_size must be > 0, got {head_size}")
    if group_to_cache:
        bad = [g for g in group_to_cache if not -1 <= g < len(caches)]
        if bad:
            raise BadRequestError(
                f"group_to_cache entries {bad} are not in [-1, {len(caches)}) caches"
            )
        if len(group_to_cache) < num_groups:
            raise BadRequestError(
                f"group_to_cache has {len(group_to_cache)} entries for {num_groups} engine groups"
            )
    rotations: list[tuple[int, int] | None] = []
    for entry in group_rot:
        if not entry:
            rotations.append(None)
            continue
        if len(entry) != 2 or entry[0] < 0 or entry[1] <= 0:
            raise BadRequestError(
                f"group_rot entry {list(entry)} must be [] or [offset >= 0, width > 0]"
            )
        rotations.append((int(entry[0]), int(entry[1])))
    if any(h <= 0 for h in group_head_size):
        raise BadRequestError("group_head_size entries must be > 0")
    return RopeState(
        head_size=head_size,
        is_neox=is_neox,
        caches=tuple(normalize_cache(c) for c in caches),
        group_to_cache=tuple(group_to_cache),
        group_rot=tuple(rotations) if group_rot else None,
        group_head_size=tuple(group_head_size),
        kv_quant=kv_quant,
    )


def rerotate(
    keys: torch.Tensor,
    rotation: GroupRotation,
    old_positions: torch.Tensor,
    new_positions: torch.Tensor,
    kv_quant: str = "",
) -> torch.Tensor:
    """K rows rotated from ``old_positions`` to ``new_positions``.

    Args:
        keys: ``[layers, tokens, hidden]`` K rows in the KV dtype (uint8 for fp8).
        rotation: The group's rotation.
        old_positions: ``[tokens]`` positions the rows were rotated at.
        new_positions: ``[tokens]`` positions to rotate them to.
        kv_quant: The fp8 format of uint8 rows.

    Returns:
        A new tensor like ``keys``; elements outside the rotary dims are copied bit for bit.

    Raises:
        ValueError: A position beyond the cache.
    """
    from lmcache_engine_blend.rerope import RequestRotation  # it builds on this module

    return RequestRotation(rotation, old_positions, new_positions, kv_quant).rotate(keys, 0)
