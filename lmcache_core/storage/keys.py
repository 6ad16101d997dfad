"""The identity of one stored object (one chunk of one KV rank of one object group)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

FORBIDDEN_SALT_CHARACTERS = frozenset("@/\\\x00")
MAX_SALT_LENGTH = 128


def pack_kv_rank(world_size: int, worker_id: int) -> int:
    """Pack a KV sharding position the way upstream LMCache does.

    ``(world_size << 24) | (worker_id << 16) | (world_size << 8) | worker_id``: the
    local world size and rank equal the global ones. ws=2, id=1 gives 0x02010201.
    """
    if not 0 <= worker_id < world_size <= 0xFF:
        raise ValueError(f"worker_id {worker_id} is not in range(world_size={world_size})")
    return (world_size << 24) | (worker_id << 16) | (world_size << 8) | worker_id


def validate_cache_salt(salt: str) -> str:
    r"""Reject salts that would break key strings; returns the salt.

    Raises:
        ValueError: The salt holds ``@``, ``/``, ``\`` or NUL, or is too long.
    """
    if len(salt) > MAX_SALT_LENGTH:
        raise ValueError(f"cache_salt is longer than {MAX_SALT_LENGTH} characters")
    bad = FORBIDDEN_SALT_CHARACTERS.intersection(salt)
    if bad:
        raise ValueError(f"cache_salt may not contain {sorted(bad)!r}")
    return salt


def prefix_chunks(present: Sequence[bool], width: int) -> int:
    """How many leading chunks are usable: present for every one of their ranks.

    The one definition of "the longest prefix across ranks" (L1's
    :meth:`~lmcache_core.storage.l1.L1Manager.lock_prefix` and the L2 prefetch
    both use it). A chunk is usable only if every earlier chunk is: the KV of a
    chunk is worthless without its prefix.

    Args:
        present: One flag per object, chunk-major: the ``width`` ranks of chunk 0,
            then those of chunk 1, and so on.
        width: Objects (ranks) per chunk.

    Returns:
        The number of leading chunks whose every flag is true.

    Raises:
        ValueError: ``width`` < 1.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, not {width}")
    try:
        gap = present.index(False)  # C speed; no per-chunk Python loop
    except ValueError:
        gap = len(present)
    return gap // width


class ObjectKey(NamedTuple):
    """What L1 and L2 store an object under.

    A named tuple: cheap to build by the thousand, hashable, and compared by value.

    Attributes:
        chunk_hash: Rolling prefix hash of the chunk (identifies the whole prefix).
        model_name: The engine's model name (never contains ``@``).
        kv_rank: The packed KV sharding position (:func:`pack_kv_rank`).
        object_group_id: 0 for ordinary models; hybrid models have several groups.
        cache_salt: Tenant isolation salt ("" when none).
    """

    chunk_hash: bytes
    model_name: str
    kv_rank: int
    object_group_id: int = 0
    cache_salt: str = ""
