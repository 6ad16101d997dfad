"""Batched CPU copies between a worker's paged KV cache and L1 objects.

``gather`` copies the blocks of a request into L1 objects (store); ``scatter`` copies L1
objects back into blocks (retrieve). Both are batched: for every run of L1 objects that lie at
a constant stride in one buffer (the usual case: a batch is reserved in one allocation) each
layer takes **one** indexed copy that moves K and V of every block of the run, straight from
the paged tensor into the objects (no staging buffer; for HND the same op also transposes
heads and tokens). Objects scattered over the arena fall back to one copy per (object, layer).
There is no Python loop over blocks or tokens.

The copies release the GIL. They use torch's intra-op threads as configured by the process
(this module never changes the thread count).

Two measured choices (``benchmarks/bench_gather_scatter.py``):

* The copies reinterpret the KV bytes as the widest element type the alignment allows, up to
  16-byte ``complex128``. Torch's indexed kernels move one element per step, so 16-byte
  elements cut their per-element cost eight-fold against bf16 and make ``index_put_`` (the
  scatter) run near memcpy speed. The copies are bitwise (no float arithmetic).
* One op per run and layer instead of per (object, kv, layer) cuts the Python and dispatch
  overhead and gives torch's intra-op threads larger pieces to split.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmcache_core.transfer.layout import KVFormat, KVLayout

__all__ = ["PagedKVCache"]

# Widest first. No torch dtype is wider than 16 bytes.
_UNIT_DTYPES: dict[int, torch.dtype] = {
    16: torch.complex128,
    8: torch.int64,
    4: torch.int32,
    2: torch.int16,
    1: torch.uint8,
}
_MAX_UNIT = 16

# OpOverload objects, resolved once: calling them skips the overload resolution a call through
# the packet (torch.ops.aten.index) does on every call.
_INDEX_OUT = torch.ops.aten.index.Tensor_out
_INDEX_PUT = torch.ops.aten.index_put_.default


def _alignment(value: int) -> int:
    """The largest power of two <= 16 that divides ``value`` (16 for 0)."""
    if value == 0:
        return _MAX_UNIT
    return min(_MAX_UNIT, value & -value)


def _as_int(value: object, what: str) -> int:
    """``value`` as a Python int (numpy integers too); bools and floats are refused."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an int, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what} must be an int, got {value!r}") from None


@dataclass(frozen=True)
class _Run:
    """Consecutive objects that lie at one constant stride in one storage."""

    first: int  # index of the first object (= chunk) of the run
    count: int
    stride: int  # bytes from one object's start to the next (unused when count == 1)


class PagedKVCache:
    """A worker's paged KV cache, one tensor per layer, as a copy source and target.

    Args:
        layers: One tensor per layer in ``layout``'s per-layer shape and dtype, all on one
            device: the CPU (typically
            :class:`~lmcache_core.transfer.cpu_shm.MappedShmTensor` tensors), or a CUDA device
            (imported KV caches; the objects are then slices of a device staging buffer).
            Any strides are accepted; contiguous ones are fastest.
        layout: The cache's layout (see :func:`~lmcache_core.transfer.layout.detect_layout`).

    Raises:
        ValueError: The layers do not match the layout or are on different devices.
    """

    def __init__(self, layers: Sequence[torch.Tensor], layout: KVLayout) -> None:
        if len(layers) != layout.num_layers:
            raise ValueError(f"layout has {layout.num_layers} layers, got {len(layers)} tensors")
        expected = layout.layer_shape()
        unit = _MAX_UNIT
        for i, layer in enumerate(layers):
            if not isinstance(layer, torch.Tensor):
                raise ValueError(f"layer {i} is a {type(layer).__name__}, not a tensor")
            if layer.device != layers[0].device:
                raise ValueError(f"layer {i} is on {layer.device}, layer 0 on {layers[0].device}")
            if tuple(layer.shape) != expected or layer.dtype != layout.dtype:
                raise ValueError(
                    f"layer {i} is {list(layer.shape)} {layer.dtype}, the {layout.format} "
                    f"layout expects {list(expected)} {layout.dtype}"
                )
            unit = min(unit, self._layer_unit(layer, layout))
        self._layout = layout
        # CPU (shared memory) or one CUDA device (the staged GPU path, where the objects are
        # slices of a device staging buffer); objects must be on the layers' device.
        self._device = layers[0].device if layers else torch.device("cpu")
        # Whether the layers can be viewed in units narrower than their dtype (needs a
        # contiguous last dim); only matters for objects at odd addresses.
        self._reinterpretable = all(layer.stride(-1) == 1 for layer in layers)
        self._layers = tuple(layers)
        self._layer_unit_max = unit
        # Reinterpreted views of the layers per copy unit, built on first use.
        self._views: dict[int, tuple[torch.Tensor, ...]] = {}
        self._closed = False

    def close(self) -> None:
        """Drop the references to the layer tensors. Idempotent.

        Call it before (or with) closing the layers' shared-memory mappings: the mappings are
        unmapped only once no tensor views them (see
        :meth:`~lmcache_core.transfer.cpu_shm.MappedShmTensor.close`). A copy running on
        another thread keeps its own references and completes; later copies raise
        ``ValueError``.
        """
        self._closed = True
        self._layers = ()
        self._views = {}

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def layout(self) -> KVLayout:
        """The cache's layout."""
        return self._layout

    @property
    def layers(self) -> tuple[torch.Tensor, ...]:
        """The per-layer tensors."""
        return self._layers

    # ------------------------------------------------------------------ public copies

    def gather(
        self, block_ids: Sequence[int], chunk_tokens: int, objects: Sequence[torch.Tensor]
    ) -> None:
        """Copy paged blocks into L1 objects (store).

        ``objects[i]`` receives chunk ``i``: the tokens of blocks
        ``block_ids[i * bpc:(i + 1) * bpc]`` (``bpc`` = blocks per chunk), in the object layout
        ``[kv_size, num_layers, chunk_tokens, hidden]``.

        Args:
            block_ids: Block ids of the chunks, in token order; at least ``len(objects) * bpc``
                (extra ids are ignored). A list, tuple, numpy array or integer tensor.
            chunk_tokens: Tokens per chunk, a multiple of the block size.
            objects: The destination objects, uint8 1-D CPU tensors of exactly
                ``layout.object_nbytes(chunk_tokens)`` bytes each.

        Raises:
            ValueError: Bad arguments; raised before any byte is copied.
        """
        chunk_tokens = _as_int(chunk_tokens, "chunk_tokens")
        bpc, ids = self._validate(block_ids, chunk_tokens, objects)
        if not objects:
            return
        ids = self._on_device(ids)
        unit = self._unit_for(objects)
        src = self._layer_views(unit)
        for run in self._runs(objects, chunk_tokens):
            dst = self._layer_object_views(objects, run, chunk_tokens, unit)
            idx = self._run_ids(ids, run, bpc)
            # dst_layer[kv, (count,) bpc, block_size, heads, units] <- src_layer[:, idx]
            for src_layer, dst_layer in zip(src, dst, strict=True):
                _INDEX_OUT(src_layer, [None, idx], out=dst_layer)

    def scatter(
        self,
        objects: Sequence[torch.Tensor],
        block_ids: Sequence[int],
        chunk_tokens: int,
        skip_first_n_tokens: int = 0,
    ) -> None:
        """Copy L1 objects into paged blocks (retrieve); the inverse of :meth:`gather`.

        The first ``skip_first_n_tokens`` tokens of the whole range are not written: they
        belong to prefix blocks the engine already holds and other requests may be reading.
        The skip may end inside a block; only that block's tail tokens are then written.

        Args:
            objects: The source objects (as in :meth:`gather`).
            block_ids: Destination block ids, in token order; at least ``len(objects) * bpc``.
                Ids written twice (only a null block should repeat) get one of the writes.
            chunk_tokens: Tokens per chunk, a multiple of the block size.
            skip_first_n_tokens: Leading tokens to leave untouched (>= 0; larger than the range
                means nothing is written).

        Raises:
            ValueError: Bad arguments; raised before any byte is copied.
        """
        skip = _as_int(skip_first_n_tokens, "skip_first_n_tokens")
        if skip < 0:
            raise ValueError(f"skip_first_n_tokens must be >= 0, got {skip}")
        chunk_tokens = _as_int(chunk_tokens, "chunk_tokens")
        bpc, ids = self._validate(block_ids, chunk_tokens, objects)
        if not objects:
            return
        cpu_ids, ids = ids, self._on_device(ids)
        block_size = self._layout.block_size
        skip = min(skip, len(objects) * chunk_tokens)
        skipped_blocks, partial = divmod(skip, block_size)
        head_chunk, head_block = divmod(skipped_blocks, bpc)
        unit = self._unit_for(objects)
        dst = self._layer_views(unit)

        full_from = head_chunk
        if head_block or partial:
            # The chunk in which the skip ends: write its tail, block-aligned part batched.
            full_from = head_chunk + 1
            src = self._layer_object_views(objects, _Run(head_chunk, 1, 0), chunk_tokens, unit)
            first_whole = head_block + (1 if partial else 0)
            rest = ids[head_chunk * bpc + first_whole : (head_chunk + 1) * bpc]
            partial_block = int(cpu_ids[skipped_blocks]) if partial else -1
            for dst_layer, obj in zip(dst, src, strict=True):  # obj: [kv, bpc, bs, heads, units]
                if partial:
                    dst_layer[:, partial_block, partial:].copy_(obj[:, head_block, partial:])
                if rest.numel():
                    _INDEX_PUT(dst_layer, [None, rest], obj[:, first_whole:])
        for run in self._runs(objects[full_from:], chunk_tokens, offset=full_from):
            src = self._layer_object_views(objects, run, chunk_tokens, unit)
            idx = self._run_ids(ids, run, bpc)
            for dst_layer, src_layer in zip(dst, src, strict=True):
                _INDEX_PUT(dst_layer, [None, idx], src_layer)

    # ------------------------------------------------------------------ validation

    def validate(
        self, block_ids: Sequence[int], chunk_tokens: int, objects: Sequence[torch.Tensor]
    ) -> None:
        """Check a gather or scatter without copying (for callers that copy in slices).

        Raises:
            ValueError: What :meth:`gather` or :meth:`scatter` would raise.
        """
        self._validate(block_ids, chunk_tokens, objects)

    def _validate(
        self, block_ids: Sequence[int], chunk_tokens: int, objects: Sequence[torch.Tensor]
    ) -> tuple[int, torch.Tensor]:
        """Check a request; return blocks per chunk and the used block ids as an int64 tensor."""
        if self._closed:
            raise ValueError("the paged KV cache is closed (its worker unregistered)")
        layout = self._layout
        bpc = layout.blocks_per_chunk(chunk_tokens)
        need = len(objects) * bpc
        if len(block_ids) < need:
            raise ValueError(
                f"{len(objects)} chunks of {chunk_tokens} tokens need {need} block ids, got "
                f"{len(block_ids)}"
            )
        ids = self._block_id_tensor(block_ids, need)
        if need:
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= layout.num_blocks:
                bad = low if low < 0 else high
                raise ValueError(f"block id {bad} is outside [0, {layout.num_blocks})")
        nbytes = layout.object_nbytes(chunk_tokens)
        for i, obj in enumerate(objects):
            if not isinstance(obj, torch.Tensor):
                raise ValueError(f"object {i} is a {type(obj).__name__}, not a tensor")
            if obj.dtype != torch.uint8 or obj.dim() != 1 or obj.device != self._device:
                raise ValueError(
                    f"object {i} must be a 1-D uint8 tensor on {self._device}, got "
                    f"{obj.dim()}-D {obj.dtype} on {obj.device}"
                )
            if obj.numel() != nbytes:
                raise ValueError(
                    f"object {i} has {obj.numel()} bytes, a {chunk_tokens}-token object of this "
                    f"layout has {nbytes}"
                )
            if obj.stride(0) != 1:
                raise ValueError(f"object {i} is not contiguous (stride {obj.stride(0)})")
        return bpc, ids

    def _on_device(self, ids: torch.Tensor) -> torch.Tensor:
        """The (checked, CPU) block ids on the layers' device."""
        return ids if self._device.type == "cpu" else ids.to(self._device)

    @staticmethod
    def _block_id_tensor(block_ids: Sequence[int], need: int) -> torch.Tensor:
        """The first ``need`` block ids as a contiguous 1-D int64 CPU tensor."""
        head = block_ids[:need]
        try:
            ids = head if isinstance(head, torch.Tensor) else torch.as_tensor(head)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise ValueError(f"block ids must be integers: {exc}") from None
        if ids.dim() != 1 and need:
            raise ValueError(f"block ids must be 1-D, got shape {list(ids.shape)}")
        if ids.numel() and (ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex()):
            # as_tensor would truncate 1.5 to 1 silently; a float id is a caller bug.
            raise ValueError(f"block ids must be integers, got {ids.dtype}")
        return ids.to(device="cpu", dtype=torch.int64).reshape(-1).contiguous()

    # ------------------------------------------------------------------ views

    @staticmethod
    def _layer_unit(layer: torch.Tensor, layout: KVLayout) -> int:
        """The widest copy unit (bytes) a layer tensor can be reinterpreted in."""
        itemsize = layout.itemsize
        if layer.stride(-1) != 1:
            # Reinterpreting needs a contiguous last dim; copy in the KV dtype itself.
            return itemsize
        # torch's view(dtype) rules: the last dim's bytes, the storage offset and every other
        # stride must be multiples of the new element size. The address must be aligned too:
        # the kernels may use aligned 16-byte loads for complex128.
        unit = min(
            _alignment(layout.head_dim * itemsize),
            _alignment(layer.data_ptr()),
            _alignment(int(layer.storage_offset()) * itemsize),
        )
        for step in layer.stride()[:-1]:
            unit = min(unit, _alignment(step * itemsize))
        return unit

    def _unit_for(self, objects: Sequence[torch.Tensor]) -> int:
        """The widest copy unit that suits the layers and every object's address.

        Raises:
            ValueError: An object is not aligned to the KV element size and the layers cannot
                be reinterpreted in smaller units.
        """
        unit = self._layer_unit_max
        for obj in objects:
            unit = min(unit, _alignment(obj.data_ptr()), _alignment(int(obj.storage_offset())))
        if unit < self._layout.itemsize and not self._reinterpretable:
            raise ValueError(
                f"L1 objects must be aligned to the {self._layout.itemsize}-byte KV element "
                "size when the KV tensors' last dimension is strided"
            )
        return unit

    def _layer_views(self, unit: int) -> tuple[torch.Tensor, ...]:
        """The layers as ``[kv, num_blocks, block_size, heads, units]`` views in ``unit``s."""
        views = self._views.get(unit)
        if views is None:
            views = tuple(self._canonical(layer, unit) for layer in self._layers)
            self._views[unit] = views
        return views

    def _canonical(self, layer: torch.Tensor, unit: int) -> torch.Tensor:
        fmt = self._layout.format
        # Always the unit's integer-like dtype, also at the KV element size: both sides of an
        # indexed copy must have the same dtype, and the objects are viewed in it too.
        layer = layer.view(_UNIT_DTYPES[unit])
        if fmt is KVFormat.HND:
            # [2, nb, heads, bs, d] -> [2, nb, bs, heads, d]: a view; the copy does the transpose.
            return layer.permute(0, 1, 3, 2, 4)
        if fmt is KVFormat.MLA:
            return layer.unsqueeze(0).unsqueeze(3)  # [1, nb, bs, 1, d]
        return layer

    @staticmethod
    def _run_ids(ids: torch.Tensor, run: _Run, bpc: int) -> torch.Tensor:
        """The run's block ids: ``[bpc]`` for a single object, else ``[count, bpc]``."""
        chosen = ids[run.first * bpc : (run.first + run.count) * bpc]
        return chosen if run.count == 1 else chosen.view(run.count, bpc)

    def _layer_object_views(
        self, objects: Sequence[torch.Tensor], run: _Run, chunk_tokens: int, unit: int
    ) -> tuple[torch.Tensor, ...]:
        """Per layer, the run's objects as ``[kv, (count,) bpc, block_size, heads, units]``.

        The ``count`` dim is absent for a single object. One ``unbind`` makes all the layer
        views at once, several times cheaper than slicing each layer.
        """
        view = self._object_view(objects, run, chunk_tokens, unit)
        if run.count == 1:
            return view[0].transpose(0, 1).unbind(0)
        return view.permute(2, 1, 0, 3, 4, 5, 6).unbind(0)

    def _object_view(
        self, objects: Sequence[torch.Tensor], run: _Run, chunk_tokens: int, unit: int
    ) -> torch.Tensor:
        """A run of objects as one ``[run, kv, layers, bpc, block_size, heads, units]`` view."""
        layout = self._layout
        nbytes = layout.object_nbytes(chunk_tokens)
        first = objects[run.first]
        # as_strided over the shared storage: the run's objects as rows of one 2-D tensor.
        if run.count == 1:
            rows = first.view(1, nbytes)
        else:
            rows = first.as_strided((run.count, nbytes), (run.stride, 1))
        if unit != 1:
            rows = rows.view(_UNIT_DTYPES[unit])
        return rows.view(
            run.count,
            layout.kv_size,
            layout.num_layers,
            chunk_tokens // layout.block_size,
            layout.block_size,
            layout.num_heads,
            layout.head_dim * layout.itemsize // unit,
        )

    def _runs(
        self,
        objects: Sequence[torch.Tensor],
        chunk_tokens: int,
        offset: int = 0,
    ) -> list[_Run]:
        """Split objects into runs at a constant, non-overlapping stride in one storage."""
        nbytes = self._layout.object_nbytes(chunk_tokens)
        runs: list[_Run] = []
        count = len(objects)
        i = 0
        while i < count:
            start = objects[i]
            storage = start.untyped_storage().data_ptr()
            length = 1
            stride = 0
            if i + 1 < count and objects[i + 1].untyped_storage().data_ptr() == storage:
                stride = objects[i + 1].data_ptr() - start.data_ptr()
                # A non-positive or overlapping stride is not a batch allocation: copy singly.
                if stride >= nbytes:
                    length = 2
                    while (
                        i + length < count
                        and objects[i + length].data_ptr() - start.data_ptr() == stride * length
                        and objects[i + length].untyped_storage().data_ptr() == storage
                    ):
                        length += 1
            runs.append(_Run(offset + i, length, stride if length > 1 else 0))
            i += length
        return runs
