"""The blend ``store``: the default store, then the stored chunks' fingerprints.

The store itself is the default engine's (same reply, unchanged). Afterwards the
chunks of the window that are resident in L1 are fingerprinted, in runs of
consecutive chunks, under the requester's namespace. The registration runs
before the reply, after the commit, so a fingerprint is never matchable before
its chunk is readable, and a lookup right after the store reply sees it.

Upstream's rules kept: only the store of rank 0 (or no rank) registers (the index
is shared by all ranks); in a store whose window starts at 0, chunk 0 is not
fingerprinted (the prefix leg owns it). Changed: chunks that were already
resident are fingerprinted too (upstream registered only newly reserved ones, so
a fingerprint lost to stale strikes never came back while its chunk stayed in L1).
"""

from __future__ import annotations

import array
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import numpy as np
from lmcache_engine_default.lmcache_driven import TransferResult

from lmcache_core.engine.chunk_keys import ChunkKeys
from lmcache_core.engine.sessions import SessionTable
from lmcache_core.protocol.types import WireCacheKey, blob_tokens, token_blob
from lmcache_core.storage.l1 import L1Manager
from lmcache_engine_blend.events import BlendEvents
from lmcache_engine_blend.fingerprint import FingerprintIndex, Tokens
from lmcache_engine_blend.reorder import PromptStore

if TYPE_CHECKING:
    from lmcache_core.engine.contract import RequestContext

logger = logging.getLogger("lmcache.engine.blend")

_tokens_decoder = msgspec.msgpack.Decoder(list[int])

Store = Callable[["RequestContext", WireCacheKey, int, list[list[int]], bytes], TransferResult]


def decode_tokens(raw: bytes) -> Tokens:
    """A key's raw token list (a msgpack array, or a uint32 blob) as a uint64 array.

    Through a uint32 ``array.array`` (one C loop over the list, and the range
    check of the hasher's own rule) rather than ``np.asarray`` of the list,
    which converts element by element: a third of a 64-chunk unified lookup's
    time went there (``docs/blend.md``, "Where a unified lookup's time goes").

    Raises:
        ValueError: ``raw`` is not a msgpack array of uint32 values.
    """
    return decode_token_list(raw)[1]


def decode_token_list(raw: bytes) -> tuple[array.array[int], Tokens]:
    """:func:`decode_tokens`, with the uint32 array too (to share it, not decode twice).

    The array, not the decoded list, is what is shared: the core's hasher packs
    it with one copy, where a list costs a Python int per token again.

    Raises:
        ValueError: ``raw`` is not a msgpack array of uint32 values.
    """
    blob = token_blob(raw)
    if blob is not None:  # already uint32 values (pack_token_blob): no decode
        ids = blob_tokens(blob)
        return ids, np.frombuffer(ids, dtype=np.uint32).astype(np.uint64)
    try:
        listed = _tokens_decoder.decode(raw)
        ids = array.array("I", listed)
    except (msgspec.DecodeError, msgspec.ValidationError, OverflowError, TypeError) as exc:
        raise ValueError(f"token_ids must be an array of uint32 values: {exc}") from None
    return ids, np.frombuffer(ids, dtype=np.uint32).astype(np.uint64)


def namespace_of(key: WireCacheKey) -> tuple[str, int, str]:
    """Whose fingerprints a key's tokens are matched against."""
    return (key.model_name, key.world_size, key.cache_salt)


class FingerprintingStore:
    """Wraps the default ``store`` with fingerprint registration.

    Args:
        store: The default engine's store handler.
        index: The fingerprint index.
        l1: The L1 tier (which chunks are resident after the store).
        chunk_keys: Hashes and keys of requests.
        sessions: The lookup service's sessions (their hash memos).
        events: Blend events.
        prompts: Where stored prompts are recorded for the reorder planner
            (``--enable-blend-reorder``), or None.
    """

    def __init__(
        self,
        store: Store,
        index: FingerprintIndex,
        l1: L1Manager,
        chunk_keys: ChunkKeys,
        sessions: SessionTable,
        events: BlendEvents,
        prompts: PromptStore | None = None,
    ) -> None:
        self._store = store
        self.prompts = prompts
        self.index = index
        self.l1 = l1
        self.chunk_keys = chunk_keys
        self.sessions = sessions
        self.events = events

    def store(
        self,
        ctx: RequestContext,
        key: WireCacheKey,
        instance_id: int,
        block_ids: list[list[int]],
        event: bytes,
    ) -> TransferResult:
        """The default store, then fingerprints of its resident chunks (rank 0 only)."""
        result = self._store(ctx, key, instance_id, block_ids, event)
        if key.worker_id in (0, None):
            try:
                self._register(key)
            except Exception:  # never changes the store's reply
                logger.exception("fingerprint registration of %s failed", key.request_id)
        return result

    def _register(self, key: WireCacheKey) -> None:
        window = self.chunk_keys.window(key)
        if not window.chunks:
            return
        session = self.sessions.get(key.request_id)
        keys = self.chunk_keys.window_keys(key, session, window)
        resident = self.l1.contains(keys)
        tokens = decode_tokens(bytes(key.token_ids))
        if self.prompts is not None:
            committed = {window.first + i: k.chunk_hash for i, k in enumerate(keys) if resident[i]}
            self.prompts.record(namespace_of(key), key.request_id, tokens, committed)
        size = self.chunk_size
        added = 0
        run_start: int | None = None
        for offset in range(len(keys) + 1):
            inside = offset < len(keys) and resident[offset]
            if inside and run_start is None:
                run_start = offset
            if not inside and run_start is not None:
                first = window.first + run_start
                last = window.first + offset
                skip = 1 if first == 0 else 0  # chunk 0 of the prompt: the prefix leg's
                added += self.index.register(
                    namespace_of(key),
                    tokens[first * size : last * size],
                    [k.chunk_hash for k in keys[run_start:offset]],
                    skip,
                    first * size,
                )
                run_start = None
        if added:
            self.events.fingerprints_registered(added, added * size)

    @property
    def chunk_size(self) -> int:
        """Tokens per chunk."""
        return self.chunk_keys.chunk_size
