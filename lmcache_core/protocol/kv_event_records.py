"""The wire records of the KV event stream, field for field upstream 0.5.6's.

Upstream encodes its dataclasses as msgpack maps and decodes them typed, so the
field names and types here are the contract; the order is kept too.
"""

from __future__ import annotations

import msgspec

KV_EVENT_CAPABILITY = "kv_event_stream"
"""Listed by ``get_experimental`` when the stream is served (upstream's clients check it)."""
KIND_STORED = "stored"
KIND_REMOVED = "removed"
KIND_LOST = "lost"
"""A marker in the log only (events were lost before it); never sent as a record."""
MEDIUM_L1 = "CPU"
"""L1's medium: upstream's name for its host-memory tier."""


def l2_medium(adapter_index: int, adapter_name: str) -> str:
    """The medium of one L2 adapter: ``L2:<1-based position>:<type>``, e.g. ``L2:1:fs``."""
    return f"L2:{adapter_index + 1}:{adapter_name}"


class KVEventRecord(msgspec.Struct, frozen=True):
    """One sequenced cache change.

    Attributes:
        seq: Its position in the log (1, 2, ...; per incarnation).
        kind: ``stored`` or ``removed``.
        medium: The tier: ``CPU`` (L1) or ``L2:<n>:<type>``.
        model_name: The model the chunks belong to.
        block_hashes: The chunk hashes (one for a store, one or more for a removal).
        parent_block_hash: A store's previous chunk's hash (``None`` for the first chunk
            of a prompt, and for removals).
        token_ids: A store's chunk's tokens (empty when not known, and for removals).
    """

    seq: int
    kind: str
    medium: str
    model_name: str
    block_hashes: list[bytes]
    parent_block_hash: bytes | None
    token_ids: list[int]


class KVEventBatch(msgspec.Struct, frozen=True):
    """One batch of the stream.

    A changed ``incarnation`` (the server restarted) or ``lost`` (records were
    dropped before ``next_cursor``) tells the subscriber to withdraw what it
    learnt before; ``enabled`` false ends the stream. Resume at ``next_cursor``.
    """

    enabled: bool
    incarnation: int
    next_cursor: int
    lost: bool
    events: list[KVEventRecord]
