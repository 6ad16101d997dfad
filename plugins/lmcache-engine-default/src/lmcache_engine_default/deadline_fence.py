"""Copies between a worker's blocks and L1 that stop at the request's deadline.

A worker that has given up on a store or retrieve reuses its blocks. So no byte
may move between those blocks and L1 once the client could have stopped waiting:
the copy runs on the request's own thread, in slices of at most
:data:`SLICE_BYTES`, and checks the deadline before each slice. Past it, the copy
stops and the request answers ``ok=False``; the reply is sent only after the
last slice returned, so no write into the blocks (retrieve) and no read of them
(store) can follow a failure reply. The deadline is shorter than every client
timeout by more than one slice's copy time (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from lmcache_core.engine.contract import RequestContext

SLICE_BYTES = 256 << 20
"""Bytes copied between two deadline checks: 8 chunks of 32 MiB, tens of milliseconds."""


def slices(count: int, object_nbytes: int) -> Iterator[tuple[int, int]]:
    """``[first, last)`` ranges of objects covering ``range(count)``, each <= SLICE_BYTES."""
    step = max(1, SLICE_BYTES // max(1, object_nbytes))
    for first in range(0, count, step):
        yield first, min(count, first + step)


def copy_until_deadline(
    ctx: RequestContext, count: int, object_nbytes: int, copy: Callable[[int, int], None]
) -> bool:
    """Run ``copy(first, last)`` slice by slice while the deadline has not passed.

    Returns:
        True when every slice was copied; False when the deadline passed first
        (the slices before it were copied, the rest never will be).
    """
    for first, last in slices(count, object_nbytes):
        if ctx.expired():
            return False
        copy(first, last)
    return True
