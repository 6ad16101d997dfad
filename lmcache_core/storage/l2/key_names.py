"""The key string upstream LMCache's native connectors store an object under.

``model@rank@group@hash[@salt]``: the model name, the packed KV rank as 8 hex
digits, the object group id and the chunk hash in lowercase hex, and the cache
salt only when there is one (unsalted keys keep the pre-salt shape, so stores
written before salts existed stay readable). The ``native_plugin`` bridge hands
these strings to third-party clients, so a client written for upstream's bridge
sees the names it expects.
"""

from __future__ import annotations

import re

from lmcache_core.storage.keys import ObjectKey, validate_cache_salt

KEY_SEP = "@"
_HEX = re.compile(r"[0-9a-f]+")
_RANK = re.compile(r"[0-9a-f]{8}")


def native_key_name(key: ObjectKey) -> str:
    """The string naming ``key`` for a native connector client."""
    name = (
        f"{key.model_name}{KEY_SEP}{key.kv_rank:08x}{KEY_SEP}{key.object_group_id:x}"
        f"{KEY_SEP}{key.chunk_hash.hex()}"
    )
    return f"{name}{KEY_SEP}{key.cache_salt}" if key.cache_salt else name


def parse_native_key_name(name: str) -> ObjectKey | None:
    """The key ``name`` names; None unless ``name`` is exactly some key's canonical string.

    Only canonical strings parse (lowercase hex, 8 rank digits, a valid salt), so a
    parsed key always maps back to the same string.
    """
    parts = name.split(KEY_SEP)
    if len(parts) not in (4, 5):
        return None
    model, rank, group, chunk = parts[:4]
    salt = parts[4] if len(parts) == 5 else ""
    if not model or not _RANK.fullmatch(rank) or (len(parts) == 5 and not salt):
        return None
    if not (_HEX.fullmatch(group) and _HEX.fullmatch(chunk)) or len(chunk) % 2:
        return None
    try:
        validate_cache_salt(salt)
        key = ObjectKey(bytes.fromhex(chunk), model, int(rank, 16), int(group, 16), salt)
    except ValueError:
        return None
    return key if native_key_name(key) == name else None
