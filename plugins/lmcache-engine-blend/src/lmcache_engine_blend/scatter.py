"""One plane of one layer of a paged KV cache written at given slots, in one indexed write.

Shared by the CPU retrieve and the device one (the same torch calls on either device).
"""

from __future__ import annotations

import torch

from lmcache_core.transfer.layout import KVFormat, KVLayout

_UNITS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def scatter_rows(
    layer: torch.Tensor,
    plane: int,
    layout: KVLayout,
    rows: torch.Tensor,
    slots: torch.Tensor,
    blk: torch.Tensor,
    off: torch.Tensor,
) -> None:
    """Write ``rows`` (``[tokens, hidden]``) into their slots of one plane of one layer.

    NHD and MLA planes are ``[slots, hidden]`` rows in memory: one ``index_copy_`` of
    the rows reinterpreted as 8-byte units (a bitwise copy, near memcpy speed). HND
    (heads before tokens) and non-contiguous planes take an indexed write over two
    dimensions, of the elements reinterpreted as integers of their size.
    """
    target = layer if layout.format is KVFormat.MLA else layer[plane]
    row_bytes = layout.hidden * layout.itemsize
    if layout.format is not KVFormat.HND and target.is_contiguous():
        unit = next(u for u in (8, 4, 2, 1) if row_bytes % u == 0)
        flat = target.view(-1, layout.hidden).view(_UNITS[unit])
        flat.index_copy_(0, slots, rows.contiguous().view(_UNITS[unit]))
        return
    # The same bits as integers of the element's size: a bitwise write whatever the dtype
    # (index_put has no kernel for fp8 dtypes on every device).
    same = _UNITS[layout.itemsize]
    target, rows = target.view(same), rows.view(same)
    values = rows.reshape(-1, layout.num_heads, layout.head_dim)
    if layout.format is KVFormat.MLA:
        target[blk, off] = rows
    elif layout.format is KVFormat.NHD:
        target[blk, off] = values
    else:  # HND: [blocks, heads, block_size, dim]; the indexed dims go first
        target[blk, :, off] = values
