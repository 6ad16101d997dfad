"""Why did this lookup miss? One explanation per lookup, from bounded memories.

For every lookup the :class:`~lmcache_core.engine.lookup.LookupService` asks
:meth:`MissExplainer.explain` for a :class:`LookupExplanation`: tokens and
chunks requested, chunks hit per tier, the first chunk that is not a hit with
its cause, and a count per cause for every chunk that is not. The causes
(:class:`~lmcache_core.observability.miss_causes.MissCause`) are tried in this
order for each such chunk:

1. ``partial_chunk``: the tokens past the last full chunk (never cacheable);
2. what L1 shows now: every rank resident (``prefix_gap``: an earlier chunk is
   missing) or one staged (``being_written``);
3. what the L2 prefetch saw (``l2_timeout``, ``l2_corrupt``, ``l2_load_failed``,
   ``l1_full``, ``prefix_gap``), or why it did not run (``prefetch_limit``,
   ``no_worker``);
4. the removal history of the first missing rank's key: ``evicted`` (tier,
   policy, reason, time);
5. the namespace index of the chunk hash: ``other_cache_salt``,
   ``other_model``, ``other_world_size``, or ``lost`` (stored under this very
   namespace and gone without a record);
6. ``never_stored``.

A full hit costs one record and one ring insert; the per-chunk work runs only
for chunks that missed, vectorised over them (docs/benchmarks.md), and not
again for a prompt asked again while nothing it read changed (the same shared
keys list, L1 presence and L2 answer, both tables at the same generation:
:meth:`MissExplainer._classified`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from lmcache_core.engine.chunk_keys import PREFIX_MEMO_MAX_KEYS
from lmcache_core.engine.recent_lookups import RecentLookups
from lmcache_core.observability.events import FirstMiss
from lmcache_core.observability.miss_causes import MissCause
from lmcache_core.protocol.types import WireCacheKey
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.namespace_index import Namespace, NamespaceIndex
from lmcache_core.storage.removal_history import Removal, RemovalHistory

MEMO_ENTRIES = 64
"""Classifications :meth:`MissExplainer._classified` keeps (each holds a presence list
of at most :data:`~lmcache_core.engine.chunk_keys.PREFIX_MEMO_MAX_KEYS` ints; the keys
list is shared with the prefix memo)."""

MAX_KEPT_ID_CHARS = 256
"""Explanations of requests with a longer request id or model name are not kept in
:attr:`MissExplainer.recent` (they are still published and counted): ids come from
clients, and the ring's memory must stay bounded."""

# Module constants: an enum member's attribute lookup costs far more than a global's.
_EVICTED = MissCause.EVICTED
_NEVER_STORED = MissCause.NEVER_STORED
_BY_STATE: tuple[MissCause | None, ...] = (None, MissCause.PREFIX_GAP, MissCause.BEING_WRITTEN)
"""A chunk's L1 state (0 absent, 1 every rank resident, 2 a rank staged) -> its cause."""

_BY_DIFFERENCE = {
    "cache_salt": MissCause.OTHER_CACHE_SALT,
    "model_name": MissCause.OTHER_MODEL,
    "world_size": MissCause.OTHER_WORLD_SIZE,
    "kv_rank": MissCause.NEVER_STORED,  # another worker of the same sharding stored it
    None: MissCause.LOST,
}


class _Kept(NamedTuple):
    """A kept classification: what it was computed from, and its result."""

    flat: Sequence[ObjectKey]
    generations: tuple[object, int, object, int]
    presence: list[int]
    l2_misses: tuple[MissCause | None, ...]
    first: FirstMiss
    counts: dict[str, int]


class LookupExplanation(msgspec.Struct, frozen=True, kw_only=True):
    """What one lookup asked for, what it hit, and why the rest missed.

    Attributes:
        request_id: The engine's request id.
        model_name: The key's model name.
        cache_salt: The key's cache salt.
        world_size: The key's world size.
        worker_id: The key's worker id (None: a lookup for every rank).
        chunk_size: Tokens per chunk.
        requested_tokens: Tokens asked for.
        requested_chunks: Full chunks asked for.
        hit_chunks: Leading chunks found (the lookup's answer).
        hit_tokens: ``hit_chunks`` in tokens (at most ``requested_tokens``).
        hit_chunks_by_tier: ``l1`` and ``l2[<index>]:<type>`` -> chunks.
        first_miss: The first chunk not hit and its cause (None: a full hit).
        miss_chunks_by_cause: Every chunk not hit, counted by cause.
        at: When the lookup finished (seconds since the epoch).
        duration_s: From the lookup's arrival to its result (L2 prefetch included).
    """

    request_id: str
    model_name: str
    cache_salt: str
    world_size: int
    worker_id: int | None
    chunk_size: int
    requested_tokens: int
    requested_chunks: int
    hit_chunks: int
    hit_tokens: int
    hit_chunks_by_tier: dict[str, float]
    first_miss: FirstMiss | None
    miss_chunks_by_cause: dict[str, int]
    at: float
    duration_s: float


class MissExplainer:
    """The server's memories for miss explanations, and the classification.

    One per server: the data path attaches :attr:`removals` and
    :attr:`namespaces` to L1 and the L2 tier (which record into them) and hands
    the explainer to the engine; the HTTP API reads :attr:`recent`.

    Args:
        removals: The history of removed objects.
        namespaces: The namespace-less chunk hash index.
        recent: The ring of recent lookups.
    """

    def __init__(
        self,
        removals: RemovalHistory | None = None,
        namespaces: NamespaceIndex | None = None,
        recent: RecentLookups[LookupExplanation] | None = None,
    ) -> None:
        self.removals = removals if removals is not None else RemovalHistory()
        self.namespaces = namespaces if namespaces is not None else NamespaceIndex()
        self.recent: RecentLookups[LookupExplanation] = (
            recent if recent is not None else RecentLookups()
        )
        self._memo: dict[tuple[object, ...], _Kept] = {}
        """Recent classifications (:meth:`_classified`), least recently asked first."""
        self._memo_lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of the two fixed tables (the ring is stated per entry in the docs)."""
        return self.removals.nbytes + self.namespaces.nbytes

    def explain(
        self,
        key: WireCacheKey,
        chunk_size: int,
        flat: Sequence[ObjectKey],
        width: int,
        l1: L1Manager,
        *,
        l1_chunks: int,
        l2_chunks: int = 0,
        l2_sources: Sequence[tuple[str, float]] = (),
        l2_misses: Sequence[MissCause | None] = (),
        not_asked: MissCause | None = None,
        started: float,
        record: bool = True,
        presence: Sequence[int] | None = None,
    ) -> LookupExplanation:
        """Classify the lookup's missing chunks, record the explanation and return it.

        Args:
            key: The lookup's key.
            chunk_size: Tokens per chunk.
            flat: The object keys of every full chunk, chunk-major (``width``
                ranks of chunk 0, then of chunk 1...).
            width: Ranks per chunk.
            l1: The L1 tier (asked what it holds of the missing chunks now).
            l1_chunks: Leading chunks L1 held.
            l2_chunks: Chunks after those that the L2 prefetch loaded.
            l2_sources: Per L2 adapter that supplied chunks: its tier label and its
                share of ``l2_chunks`` (ranks of one chunk may come from several).
            l2_misses: Per chunk after ``l1_chunks``, the L2 tier's cause or None
                (:attr:`~lmcache_core.storage.l2.tier.PrefetchResult.misses`).
            not_asked: Why L2 was not asked although it might hold the rest
                (``prefetch_limit``, ``no_worker``), or None.
            started: ``time.time()`` when the lookup arrived.
            record: Keep it in :attr:`recent` (False for a superseded lookup;
                ignored for ids longer than :data:`MAX_KEPT_ID_CHARS`).
            presence: What L1 held of the keys after the hit, when the caller
                read it already (:meth:`~lmcache_core.storage.l1.L1Manager.try_lock_prefix`;
                only with ``l2_chunks == 0``); None: asked here.
        """
        num_chunks = len(flat) // width if width else 0
        hit = min(num_chunks, l1_chunks + l2_chunks)
        by_tier: dict[str, float] = {"l1": float(l1_chunks)}
        for label, count in l2_sources:
            by_tier[label] = by_tier.get(label, 0.0) + count
        counts: dict[str, int] = {}
        first: FirstMiss | None = None
        if hit < num_chunks:
            missing = flat[hit * width :]
            known = presence if l2_chunks == 0 else None
            rows = list(known) if known is not None else l1.presence(missing)
            first = self._classified(
                flat, missing, width, hit, rows, l1_chunks, l2_misses, not_asked, counts
            )
        if key.end > num_chunks * chunk_size:
            counts[MissCause.PARTIAL_CHUNK] = 1
            if first is None:
                first = FirstMiss(chunk=num_chunks, cause=MissCause.PARTIAL_CHUNK)
        now = time.time()
        explanation = LookupExplanation(
            request_id=key.request_id,
            model_name=key.model_name,
            cache_salt=key.cache_salt,
            world_size=key.world_size,
            worker_id=key.worker_id,
            chunk_size=chunk_size,
            requested_tokens=key.end,
            requested_chunks=num_chunks,
            hit_chunks=hit,
            hit_tokens=min(hit * chunk_size, key.end),
            hit_chunks_by_tier=by_tier,
            first_miss=first,
            miss_chunks_by_cause=counts,
            at=now,
            duration_s=max(0.0, now - started),
        )
        if (
            record
            and len(key.request_id) <= MAX_KEPT_ID_CHARS
            and len(key.model_name) <= MAX_KEPT_ID_CHARS
        ):
            self.recent.add(key.request_id, explanation)
        return explanation

    def _classified(
        self,
        flat: Sequence[ObjectKey],
        missing: Sequence[ObjectKey],
        width: int,
        offset: int,
        presence: list[int],
        l1_chunks: int,
        l2_misses: Sequence[MissCause | None],
        not_asked: MissCause | None,
        counts: dict[str, int],
    ) -> FirstMiss:
        """:meth:`_classify`, or its answer for the same question asked before.

        The classification is a function of the missing keys, what L1 holds of
        them (``presence``), what L2 said, ``not_asked``, and the two tables. A
        prompt looked up again (a request the scheduler could not admit yet, the
        same documents with a new question: their full chunks' key list is the
        one :meth:`~lmcache_core.engine.chunk_keys.ChunkKeys.prefix_keys`
        remembers, the same list object) whose L1 presence and L2 answer are
        the same, with neither table changed since (their generations), gets
        the same causes and first miss: kept here, for the :data:`MEMO_ENTRIES`
        questions asked most recently, keys lists of at most
        :data:`~lmcache_core.engine.chunk_keys.PREFIX_MEMO_MAX_KEYS` (the only
        ones shared between lookups).
        """
        if len(flat) > PREFIX_MEMO_MAX_KEYS:
            return self._classify(
                missing, width, offset, presence, l1_chunks, l2_misses, not_asked, counts
            )
        removals, namespaces = self.removals, self.namespaces
        # Read before classifying: a change meanwhile makes the kept answer a miss later.
        generations = (removals, removals.generation, namespaces, namespaces.generation)
        memo_key = (id(flat), offset, width, l1_chunks, not_asked)
        with self._memo_lock:
            kept = self._memo.pop(memo_key, None)
            if kept is not None:
                self._memo[memo_key] = kept  # the most recently asked last
        l2_answer = tuple(l2_misses)  # the tier's own tuple: no copy
        if (
            kept is not None
            and kept.flat is flat
            and kept.generations == generations
            and kept.presence == presence
            and kept.l2_misses == l2_answer
        ):
            counts.update(kept.counts)
            return kept.first
        classified: dict[str, int] = {}
        first = self._classify(
            missing, width, offset, presence, l1_chunks, l2_misses, not_asked, classified
        )
        counts.update(classified)
        with self._memo_lock:
            memo = self._memo
            memo.pop(memo_key, None)
            memo[memo_key] = _Kept(flat, generations, presence, l2_answer, first, classified)
            if len(memo) > MEMO_ENTRIES:
                del memo[next(iter(memo))]
        return first

    def _classify(
        self,
        missing: Sequence[ObjectKey],
        width: int,
        offset: int,
        presence: list[int],
        l1_chunks: int,
        l2_misses: Sequence[MissCause | None],
        not_asked: MissCause | None,
        counts: dict[str, int],
    ) -> FirstMiss:
        """Count a cause per chunk of ``missing`` (chunks ``offset``...); detail the first.

        ``presence``: what L1 holds of each of ``missing`` (1 resident, 2 staged,
        0 neither). Each step is one comprehension over the chunks (or one
        vectorised table lookup), never a Python loop with branches per chunk
        and rank: numpy on arrays this small costs more than it saves
        (docs/benchmarks.md).
        """
        chunks = len(missing) // width
        rows = (
            presence
            if width == 1
            else [_row_state(presence[c * width : (c + 1) * width]) for c in range(chunks)]
        )
        causes: list[MissCause | None] = [_BY_STATE[state] for state in rows]
        if l2_misses:
            start = offset - l1_chunks  # the first of these chunks in l2_misses
            seen = list(l2_misses[start : start + chunks])
            seen += [None] * (chunks - len(seen))
            causes = [c if c is not None else s for c, s in zip(causes, seen, strict=True)]
        if not_asked is not None:
            causes = [c if c is not None else not_asked for c in causes]
        undecided = [chunk for chunk, cause in enumerate(causes) if cause is None]
        first_removal: Removal | None = None
        if undecided:
            # The first absent rank of each chunk left stands for the chunk.
            absent = (
                [missing[c] for c in undecided]
                if width == 1
                else [
                    missing[c * width + presence[c * width : (c + 1) * width].index(0)]
                    for c in undecided
                ]
            )
            evicted = self.removals.matches(absent).tolist()
            decided = [_EVICTED if gone else _NEVER_STORED for gone in evicted]
            if len(undecided) == chunks:  # the usual miss: nothing in L1, L2 said nothing
                causes = list(decided)
            else:
                for chunk, cause in zip(undecided, decided, strict=True):
                    causes[chunk] = cause
            others = [i for i, gone in enumerate(evicted) if not gone]
            if others:
                namespaces = self.namespaces.find_many([absent[i].chunk_hash for i in others])
                for i, namespace in zip(others, namespaces, strict=True):
                    if namespace is not None:
                        causes[undecided[i]] = _namespace_cause(namespace, absent[i])
            if undecided[0] == 0 and evicted[0]:
                first_removal = self.removals.find(absent[0])
        counts.update(Counter(causes))  # type: ignore[arg-type]  # every cause is decided now
        head = causes[0]
        assert head is not None
        if first_removal is None:
            return FirstMiss(chunk=offset, cause=head)
        return FirstMiss(
            chunk=offset,
            cause=head,
            tier=first_removal.tier,
            policy=first_removal.policy,
            reason=first_removal.reason,
            removed_at=first_removal.at,
        )


def _row_state(row: Sequence[int]) -> int:
    """One chunk's L1 state from its ranks' presence: 2 if one is staged, 1 if all resident."""
    return 2 if 2 in row else 0 if 0 in row else 1


def _namespace_cause(namespace: Namespace | None, key: ObjectKey) -> MissCause:
    """What the index says of a chunk hash the history does not know."""
    if namespace is None:
        return MissCause.NEVER_STORED
    return _BY_DIFFERENCE[namespace.difference(Namespace.of(key))]
