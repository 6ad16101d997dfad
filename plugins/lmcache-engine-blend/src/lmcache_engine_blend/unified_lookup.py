"""``cb_unified_lookup``: the exact prefix, plus stored chunks found anywhere by content.

One request id, polled until the result is ready (nil means "call again"):

1. **Prefix leg** (first poll): the default engine's ``lookup`` of the prompt,
   with its locks, session bookkeeping and L2 prefetch; the standard
   ``retrieve``/``free_lookup_locks`` consume what it locked.
2. **Fingerprint leg** (first poll): the prompt matched against the fingerprint
   index of the requester's namespace.
3. **Sparse leg** (once the prefix is known): candidates at or past the prefix,
   one column per distinct chunk, read-locked in L1 in one batch; chunks only in
   L2 are loaded in the background (each poll answers nil until they are).
4. **Classification**: *found* (every rank locked) resets the chunk's strikes;
   *partial* (some ranks only) is released and not struck; *stale* (nowhere) is
   struck, and removed from the index at the second consecutive strike.
5. **Overlap removal**: among found chunks past the prefix, by ``cur_st``, the
   earliest wins; the losers' locks are released at once.

With ``--enable-segmented-prefix`` the prefix leg's L2 prefetch keeps the
chunks past a gap (a chunk missing everywhere, or whose load failed) resident
and read-locked (:attr:`~lmcache_core.storage.l2.tier.Retention.SEGMENTED`);
they come back as ``segmented_prefix_segments`` at their own positions with the
request's own chain hashes, so only the gap is recomputed. Same-position
fingerprint matches of those chunks are dropped before the sparse leg, and a
non-prefix match overlapping one loses to it (it would write the same slots).
The post-gap locks are the session's: a retrieve of those segments consumes
them, ``end_session``, session expiry or a newer lookup releases the rest.

The winners' locks are recorded in the request's session (so ``end_session``,
session expiry or a newer lookup under the same id releases what no retrieve
consumed) and stashed for ``cb_retrieve_pre_computed``. Jobs that nobody polls
any more expire after ``job_ttl_s`` (upstream kept them forever), and the table
is bounded.

Differences from upstream, on purpose: ``key.end`` bounds the prompt (upstream
used every token whatever ``start``/``end`` said); a chunk that exists in L2
but fails to load counts as stale, not partial (the L2 tier reports loads, not
existence).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import msgspec

from lmcache_core.engine.contract import WouldBlock
from lmcache_core.engine.lookup import INLINE_MAX_KEYS, LookupService
from lmcache_core.engine.prefetch_pool import PrefetchPool
from lmcache_core.engine.request_events import identity
from lmcache_core.engine.sessions import LookupJob, Session
from lmcache_core.observability.events import CbLookupEnd
from lmcache_core.protocol.errors import BadRequestError
from lmcache_core.protocol.types import CBMatchResult, CBUnifiedLookupResult, WireCacheKey
from lmcache_core.storage.keys import ObjectKey, pack_kv_rank
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.l2.tier import L2Tier, Retention
from lmcache_engine_blend.events import BlendEvents
from lmcache_engine_blend.fingerprint import FingerprintIndex, Match, MatchToken, Prompt
from lmcache_engine_blend.fingerprinting_store import namespace_of
from lmcache_engine_blend.prompt_cache import PromptCache

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from lmcache_core.engine.contract import RequestContext

MAX_JOBS = 65536
"""Unified lookups polled at once, at most; the oldest is dropped first."""

State = Literal["found", "partial", "stale", "loading"]


@dataclass
class Candidate:
    """One distinct stored chunk the fingerprint leg found past the prefix."""

    match: Match
    keys: list[ObjectKey]
    state: State = "loading"


@dataclass
class Stash:
    """The sparse leg's locks for the retrieve: chain hash -> keys (every rank)."""

    readers: int
    per_hash: dict[bytes, list[ObjectKey]]


@dataclass(frozen=True)
class InlinePlan:
    """The inline path's winners of one match and prefix (:meth:`UnifiedLookups._inline_plan`).

    Shared by every lookup of the same prompt, so never changed: the stash
    gets a copy of ``per_hash``, the result new segments.
    """

    candidates: int
    """Distinct matched chunks at or past the prefix (the end event's ``fingerprint_hits``)."""
    keys: list[ObjectKey]
    """The winners' keys, every rank, in order: what is locked."""
    chains: list[bytes]
    per_hash: dict[bytes, list[ObjectKey]]
    segments: list[tuple[int, int, int, int, bytes]]
    """``CBMatchResult`` fields of each winner."""
    logged: tuple[tuple[int, int, str], ...]
    """The end event's ``segments`` (``old_st``, ``cur_st``, hash in hex) of the winners:
    at 64 chunks their hex strings and tuples were a third of the event's cost."""


@dataclass
class BlendJob:
    """One request's unified lookup, from its first poll to its result."""

    key: WireCacheKey
    session: Session
    readers: int
    matches: list[Match]
    prefix: LookupJob | None
    created: float
    started: float
    polls: int = 0
    candidates: list[Candidate] | None = None
    loading: threading.Event | None = None
    result: CBUnifiedLookupResult | None = None
    dropped: bool = False
    mutex: threading.Lock = field(default_factory=threading.Lock)


class UnifiedLookups:
    """Serves ``cb_unified_lookup`` and keeps the stashes retrieves consume.

    Args:
        lookups: The prefix lookup service (its sessions too).
        index: The fingerprint index.
        l1: The L1 tier.
        l2: The L2 tier, or None.
        prefetch_pool: Where L2 loads of the sparse leg run.
        object_nbytes: Object size of a model and world size (None: no worker registered).
        events: Blend events.
        job_ttl_s: Seconds after which a job nobody polls is dropped.
        segmented: ``--enable-segmented-prefix``: keep and report the chunks past
            a gap of the prefix.
    """

    def __init__(
        self,
        *,
        lookups: LookupService,
        index: FingerprintIndex,
        l1: L1Manager,
        l2: L2Tier | None,
        prefetch_pool: PrefetchPool,
        object_nbytes: Callable[[str, int], int | None],
        events: BlendEvents,
        job_ttl_s: float,
        segmented: bool = False,
    ) -> None:
        self.lookups = lookups
        self.retention = Retention.SEGMENTED if segmented else Retention.PREFIX
        self.sessions = lookups.sessions
        self.index = index
        self.l1 = l1
        self.l2 = l2
        self.prefetch_pool = prefetch_pool
        self.object_nbytes = object_nbytes
        self.events = events
        self.job_ttl_s = job_ttl_s
        self.chunk_size = index.chunk_size
        self.prompts = PromptCache(index.chunk_size)
        self._jobs: OrderedDict[str, BlendJob] = OrderedDict()
        self._stashes: OrderedDict[str, Stash] = OrderedDict()
        self._lock = threading.Lock()
        self.expired_jobs = 0

    def __len__(self) -> int:
        return len(self._jobs)

    # -- the operation -----------------------------------------------------------------------

    def cb_unified_lookup(
        self, ctx: RequestContext, key: WireCacheKey, tp_size: int
    ) -> CBUnifiedLookupResult | None:
        """The request's result once every leg is resident; None while loading."""
        if key.num_kv_readers < 1:
            raise BadRequestError("cb_unified_lookup needs num_kv_readers >= 1")
        if tp_size < 0:
            raise BadRequestError("tp_size must be >= 0")
        self.expire()
        with self._lock:
            job = self._jobs.get(key.request_id)
        if job is None:
            job = self._start(ctx, key, tp_size)
        result = self._advance(job)
        if result is not None:
            with self._lock:
                if self._jobs.get(key.request_id) is job:
                    del self._jobs[key.request_id]
        return result

    def try_inline(
        self, ctx: RequestContext, key: WireCacheKey, tp_size: int
    ) -> CBUnifiedLookupResult:
        """:meth:`cb_unified_lookup` on the request loop: a first poll answered at once.

        Served when nothing can make it wait: a new request id (no job being
        polled, no stash to release), a worker of the model, at most
        :data:`~lmcache_core.engine.lookup.INLINE_MAX_KEYS` prefix keys and as
        many sparse-leg keys, a prefix leg that L1 answers alone (a full hit, or
        no L2 tier: :meth:`LookupService.try_lookup_inline` with ``partial``),
        and the winning fingerprint matches resident for every rank with the L1
        lock free. Only the winners are locked: with every candidate resident
        the overlap rule keeps the same ones (a loser is beaten by an earlier
        winner, present either way), so the result is the pool's; the losers
        are not checked (neither struck nor refreshed in the index).

        :class:`WouldBlock` before the prefix leg changes nothing. After it the
        job is registered with its prefix leg done, and the pool's call (the
        server's fallback) resumes it as a second poll would: the sparse leg
        runs there, with its L2 loads.

        Raises:
            WouldBlock: Not served here; the pool serves the request.
            BadRequestError: As :meth:`cb_unified_lookup`.
        """
        if key.num_kv_readers < 1:
            raise BadRequestError("cb_unified_lookup needs num_kv_readers >= 1")
        if tp_size < 0:
            raise BadRequestError("tp_size must be >= 0")
        if (key.end // self.chunk_size) * key.world_size > INLINE_MAX_KEYS:
            raise WouldBlock
        with self._lock:
            if key.request_id in self._jobs or key.request_id in self._stashes:
                raise WouldBlock  # a poll, or locks to release: the pool's
        if self.object_nbytes(key.model_name, key.world_size) is None:
            raise WouldBlock
        raw = bytes(key.token_ids)
        tokens, hashes = self._find(raw, key.end)
        prefix_key = msgspec.structs.replace(key, worker_id=None)
        num_chunks = key.end // self.chunk_size
        if len(hashes) >= num_chunks:
            # The chain hashes the prompt cache keeps for these bytes: the prefix leg need not
            # find them again in the token hash cache (a second 65 KB copy, digest and compare).
            self.lookups.chunk_keys.tokens.keep_bound(hashes, raw)
            self.lookups.try_lookup_inline(
                ctx, prefix_key, tp_size, partial=True, hashes=hashes[:num_chunks]
            )
        else:
            self.lookups.try_lookup_inline(ctx, prefix_key, tp_size, partial=True)
        session = self.sessions.get(key.request_id)
        self.events.lookup_started(key, len(tokens))
        matches, token = self.index.match_with_token(namespace_of(key), tokens)
        job = BlendJob(
            key, session, key.num_kv_readers, matches, session.job, time.monotonic(), time.time()
        )
        self._register(job)
        if not job.mutex.acquire(blocking=False):
            raise WouldBlock
        try:
            result = self._finish_inline(job, tokens, token)
        finally:
            job.mutex.release()
        with self._lock:
            if self._jobs.get(key.request_id) is job:
                del self._jobs[key.request_id]
        return result

    def _finish_inline(
        self, job: BlendJob, prompt: Prompt, token: MatchToken | None
    ) -> CBUnifiedLookupResult:
        """The sparse leg and the result with the winners resident (job mutex held)."""
        assert job.prefix is not None and job.prefix.hit_chunks is not None
        prefix_tokens = job.prefix.hit_chunks * self.chunk_size
        plan = self._inline_plan(job, prompt, token, prefix_tokens)
        flat = plan.keys
        if len(flat) > INLINE_MAX_KEYS:
            raise WouldBlock
        deadline = self.sessions.clock() + self.l1.read_ttl_s
        if flat and not self.l1.try_lock_all(flat, job.readers):
            raise WouldBlock  # nothing locked: the pool's sparse leg starts afresh
        job.polls += 1
        if flat:
            with job.session.mutex:
                job.session.take_locks(flat, job.readers, deadline)
        # What _finish does when every candidate is a found winner: no losers, none stale.
        key = job.key
        self.index.found(namespace_of(key), plan.chains)
        if plan.per_hash:
            with self._lock:
                self._stashes[key.request_id] = Stash(job.readers, dict(plan.per_hash))
                self._stashes.move_to_end(key.request_id)
                while len(self._stashes) > MAX_JOBS:
                    self._stashes.popitem(last=False)
        segments = [CBMatchResult(*fields) for fields in plan.segments]
        job.result = CBUnifiedLookupResult(prefix_tokens, segments, [])
        self._publish_end(
            job,
            prefix_tokens,
            segments,
            [],
            fingerprint_hits=plan.candidates,
            storage_hits=len(plan.chains),
            logged=plan.logged,
        )
        return job.result

    def _inline_plan(
        self, job: BlendJob, prompt: Prompt, token: MatchToken | None, prefix_tokens: int
    ) -> InlinePlan:
        """The winners of the job's matches past ``prefix_tokens``, memoised per match.

        A pure function of the matches (their token: namespace, index
        generation, matches), the prefix and the chunk size: the earliest
        ``cur_st`` first, as the pool's overlap rule. The inline path never has
        post-gap chunks (no L2 leg ran), so they play no part. A prompt looked
        up again reuses it; only the locks, the strikes and the stash are
        done per lookup.
        """
        assert not _post_gap(job)
        plan_key = (prefix_tokens, self.chunk_size)
        kept = prompt.plan(token, plan_key)
        if isinstance(kept, InlinePlan):
            return kept
        candidates = self._candidates(job, prefix_tokens)
        size = self.chunk_size
        winners: list[Candidate] = []
        end = prefix_tokens
        for candidate in sorted(candidates, key=lambda c: c.match.cur_st):
            if candidate.match.cur_st >= end:
                winners.append(candidate)
                end = candidate.match.cur_st + size
        matches = [c.match for c in winners]
        plan = InlinePlan(
            candidates=len(candidates),
            keys=[k for c in winners for k in c.keys],
            chains=[m.chain_hash for m in matches],
            per_hash={c.match.chain_hash: c.keys for c in winners},
            segments=[
                (m.old_st, m.old_st + size, m.cur_st, m.cur_st + size, m.chain_hash)
                for m in matches
            ],
            logged=tuple((m.old_st, m.cur_st, m.chain_hash.hex()) for m in matches),
        )
        prompt.keep_plan(token, plan_key, plan)
        return plan

    def _decode(self, key: WireCacheKey) -> Prompt:
        """The key's prompt (decoded once for both legs: the prefix leg's hashes too)."""
        return self._find(bytes(key.token_ids), key.end)[0]

    def _find(self, raw: bytes, end: int) -> tuple[Prompt, list[bytes]]:
        """The prompt of a key's raw tokens, and their chain hashes (primed in the core's cache)."""
        token_hashes = self.lookups.chunk_keys.tokens

        def prime(raw: bytes, ids: Sequence[int], known: list[bytes], shared: int) -> list[bytes]:
            # The base's hashes of the chunks wholly inside the shared tokens are this list's.
            return token_hashes.prime(raw, ids, known[: shared // token_hashes.chunk_size])

        try:
            return self.prompts.find(raw, end, prime)
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None

    def _start(self, ctx: RequestContext, key: WireCacheKey, tp_size: int) -> BlendJob:
        tokens = self._decode(key)
        session = self.sessions.get(key.request_id)
        self._release_stash(key.request_id, session)
        self.events.lookup_started(key, len(tokens))
        now = time.monotonic()
        if self.object_nbytes(key.model_name, key.world_size) is None:
            # No worker of this model and world size: nothing could be retrieved.
            job = BlendJob(key, session, key.num_kv_readers, [], None, now, time.time())
            job.result = CBUnifiedLookupResult(0, [], [])
            self._publish_end(job, 0, [], [], no_context=True)
            return job
        prefix_key = msgspec.structs.replace(key, worker_id=None)
        self.lookups.lookup(ctx, prefix_key, tp_size, retention=self.retention)
        matches = self.index.match(namespace_of(key), tokens)
        job = BlendJob(key, session, key.num_kv_readers, matches, session.job, now, time.time())
        self._register(job)
        return job

    def _register(self, job: BlendJob) -> None:
        """Make ``job`` its request's current one; the one it replaces is dropped."""
        key = job.key
        displaced: list[BlendJob] = []
        with self._lock:
            old = self._jobs.pop(key.request_id, None)
            if old is not None:
                displaced.append(old)
            self._jobs[key.request_id] = job
            while len(self._jobs) > MAX_JOBS:
                displaced.append(self._jobs.popitem(last=False)[1])
        for stale_job in displaced:
            self._drop(stale_job)

    def _advance(self, job: BlendJob) -> CBUnifiedLookupResult | None:
        with job.mutex:
            job.polls += 1
            if job.result is not None:
                return job.result
            if job.prefix is None or job.prefix.hit_chunks is None:
                return None
            prefix_tokens = job.prefix.hit_chunks * self.chunk_size
            if job.candidates is None:
                self._submit_sparse(job, prefix_tokens)
            if job.loading is not None and not job.loading.is_set():
                return None
            job.result = self._finish(job, prefix_tokens)
            return job.result

    # -- the sparse leg ----------------------------------------------------------------------

    def _candidates(self, job: BlendJob, prefix_tokens: int) -> list[Candidate]:
        """One candidate per distinct stored chunk matched at or past the prefix."""
        key = job.key
        seen: set[bytes] = set()
        candidates: list[Candidate] = []
        retained = _post_gap(job)
        size = self.chunk_size
        model, salt = key.model_name, key.cache_salt
        ranks = [pack_kv_rank(key.world_size, rank) for rank in range(key.world_size)]
        for match in job.matches:
            if match.cur_st < prefix_tokens or match.chain_hash in seen:
                continue
            if match.old_st == match.cur_st and match.cur_st // size in retained:
                continue  # the segmented prefix has this chunk at this place already
            seen.add(match.chain_hash)
            chain = match.chain_hash
            candidates.append(
                Candidate(match, [ObjectKey(chain, model, r, 0, salt) for r in ranks])
            )
        return candidates

    def _submit_sparse(self, job: BlendJob, prefix_tokens: int) -> None:
        key, readers = job.key, job.readers
        candidates = self._candidates(job, prefix_tokens)
        job.candidates = candidates
        if not candidates:
            return
        flat = [k for c in candidates for k in c.keys]
        deadline = self.sessions.clock() + self.l1.read_ttl_s
        present = self.l1.lock_for_read(flat, readers)
        width = key.world_size
        to_load: list[Candidate] = []
        if all(present):  # the usual case with documents in L1: one pass, one record
            for candidate in candidates:
                candidate.state = "found"
            with job.session.mutex:
                job.session.take_locks(flat, readers, deadline)
            return
        held_all: list[ObjectKey] = []
        with job.session.mutex:
            for index, candidate in enumerate(candidates):
                got = present[index * width : (index + 1) * width]
                if all(got):
                    candidate.state = "found"
                    held_all.extend(candidate.keys)
                    continue
                held = [k for k, ok in zip(candidate.keys, got, strict=True) if ok]
                if held:  # some ranks only: unusable, but not stale
                    self.l1.unlock(held, readers)
                    candidate.state = "partial"
                else:
                    candidate.state = "stale"
                    to_load.append(candidate)
            job.session.take_locks(held_all, readers, deadline)
        nbytes = self.object_nbytes(key.model_name, key.world_size)
        if to_load and self.l2 is not None and nbytes is not None:
            job.loading = threading.Event()
            for candidate in to_load:
                candidate.state = "loading"
            self.prefetch_pool.submit(self._load, job, to_load, nbytes)

    def _load(self, job: BlendJob, todo: list[Candidate], nbytes: int) -> None:
        """Load the chunks only L2 has (a pool thread); a chunk is all its ranks or nothing."""
        assert self.l2 is not None and job.loading is not None
        try:
            for candidate in todo:
                deadline = self.sessions.clock() + self.l1.read_ttl_s
                loaded = False
                try:
                    loaded = self.l2.prefetch([candidate.keys], nbytes, job.readers).chunks == 1
                finally:
                    with job.mutex, job.session.mutex:
                        if loaded and job.dropped:
                            self.l1.unlock(candidate.keys, job.readers)
                        elif loaded:
                            job.session.take_locks(candidate.keys, job.readers, deadline)
                        candidate.state = "found" if loaded else "stale"
        finally:
            job.loading.set()

    # -- the result --------------------------------------------------------------------------

    def _finish(
        self, job: BlendJob, prefix_tokens: int, fingerprint_hits: int | None = None
    ) -> CBUnifiedLookupResult:
        """The result of the found candidates; ``fingerprint_hits``: all candidates (inline)."""
        key, size = job.key, self.chunk_size
        namespace = namespace_of(key)
        candidates = job.candidates or []
        found = [c for c in candidates if c.state == "found"]
        stale = [c.match.chain_hash for c in candidates if c.state == "stale"]
        self.index.found(namespace, [c.match.chain_hash for c in found])
        if stale:
            removed = self.index.stale(namespace, stale)
            self.events.chunks_evicted(key, len(stale), removed)
        retained = _post_gap(job)
        kept: list[Candidate] = []
        end = prefix_tokens
        losers: list[ObjectKey] = []
        for candidate in sorted(found, key=lambda c: c.match.cur_st):
            first, last = candidate.match.cur_st, candidate.match.cur_st + size
            # A retained post-gap chunk is the request's own KV at its own place: it wins.
            clash = any(i in retained for i in range(first // size, -(-last // size)))
            if first >= end and not clash:
                kept.append(candidate)
                end = last
            else:
                losers.extend(candidate.keys)
        if losers:
            with job.session.mutex:
                held = job.session.give_back(losers, job.readers, self.sessions.clock())
            self.lookups.release(held)
        per_hash = {c.match.chain_hash: c.keys for c in kept}
        per_hash.update({keys[0].chunk_hash: keys for keys in retained.values()})
        if per_hash:
            with self._lock:
                self._stashes[key.request_id] = Stash(job.readers, per_hash)
                self._stashes.move_to_end(key.request_id)
                while len(self._stashes) > MAX_JOBS:
                    self._stashes.popitem(last=False)
        segments = [
            CBMatchResult(
                c.match.old_st,
                c.match.old_st + size,
                c.match.cur_st,
                c.match.cur_st + size,
                c.match.chain_hash,
            )
            for c in kept
        ]
        segmented = [
            CBMatchResult(i * size, (i + 1) * size, i * size, (i + 1) * size, keys[0].chunk_hash)
            for i, keys in sorted(retained.items())
        ]
        result = CBUnifiedLookupResult(prefix_tokens, segments, segmented)
        self._publish_end(
            job,
            prefix_tokens,
            segments,
            segmented,
            fingerprint_hits=len(candidates) if fingerprint_hits is None else fingerprint_hits,
            storage_hits=len(found),
            stale=len(stale),
        )
        return result

    def _publish_end(
        self,
        job: BlendJob,
        prefix_tokens: int,
        segments: list[CBMatchResult],
        segmented: list[CBMatchResult],
        *,
        no_context: bool = False,
        fingerprint_hits: int = 0,
        storage_hits: int = 0,
        stale: int = 0,
        logged: tuple[tuple[int, int, str], ...] | None = None,
    ) -> None:
        """Publish the lookup's end event, if anyone listens.

        ``logged``: the ``segments`` field, when the caller keeps it (an inline plan).
        """
        if not self.events.wants_lookup_end():
            return
        key, size = job.key, self.chunk_size
        requested = key.end // size * size
        # Every segment, non-prefix or segmented, is one whole chunk.
        non_prefix = len(segments) * size
        seg_tokens = len(segmented) * size
        if logged is None:
            logged = tuple((s.old_st, s.cur_st, s.hash.hex()) for s in segments)
        self.events.lookup_ended(
            CbLookupEnd(
                **identity(key),
                num_tokens=key.end,
                requested_tokens=requested,
                # The classes never overlap: segments start at or past the prefix.
                hit_tokens=min(requested, prefix_tokens + non_prefix + seg_tokens),
                prefix_hit_tokens=prefix_tokens,
                non_prefix_hit_tokens=non_prefix,
                segmented_prefix_hit_tokens=seg_tokens,
                prefix_chunks=prefix_tokens // size,
                fingerprint_hits=fingerprint_hits,
                storage_hits=storage_hits,
                stale_chunks=stale,
                no_gpu_context=no_context,
                polls=job.polls,
                duration_s=time.time() - job.started,
                fingerprint_matches=len(job.matches),
                segments=logged,
                segmented_segments=tuple((s.old_st, s.cur_st, s.hash.hex()) for s in segmented),
            )
        )

    # -- stashes and expiry ------------------------------------------------------------------

    def take_stash(self, request_id: str) -> Stash | None:
        """The sparse leg's locks of the request's last lookup (kept until replaced)."""
        with self._lock:
            return self._stashes.get(request_id)

    def _release_stash(self, request_id: str, session: Session) -> None:
        """A new lookup under the same id: release what the previous one still holds."""
        with self._lock:
            stash = self._stashes.pop(request_id, None)
        if stash is None:
            return
        keys = [k for keys in stash.per_hash.values() for k in keys]
        with session.mutex:
            held = session.give_back(keys, stash.readers, self.sessions.clock())
        self.lookups.release(held)

    def forget(self, request_id: str) -> None:
        """The request's session ended (its locks are released with it)."""
        with self._lock:
            self._stashes.pop(request_id, None)
            job = self._jobs.pop(request_id, None)
        if job is not None:
            self._drop(job)

    def expire(self) -> int:
        """Drop jobs nobody polled for ``job_ttl_s``; returns how many."""
        cutoff = time.monotonic() - self.job_ttl_s
        jobs: list[BlendJob] = []
        with self._lock:  # creation order: the expired ones are at the front
            while self._jobs and next(iter(self._jobs.values())).created < cutoff:
                jobs.append(self._jobs.popitem(last=False)[1])
        for job in jobs:
            self._drop(job)
        self.expired_jobs += len(jobs)
        return len(jobs)

    def _drop(self, job: BlendJob) -> None:
        """Forget a job: its locks stay in the session, which releases them when it ends."""
        with job.mutex:
            job.dropped = True


def _post_gap(job: BlendJob) -> dict[int, list[ObjectKey]]:
    """The prefix leg's chunks kept past its gap (segmented mode), by chunk index."""
    return job.prefix.post_gap if job.prefix is not None else {}


class UnifiedLookupHandler:
    """The ``cb_unified_lookup`` handler, with the request loop's inline attempt.

    The request server calls ``try_inline`` on its loop first and, when that
    raises :class:`WouldBlock`, the handler itself on the CPU pool.
    """

    def __init__(self, lookups: UnifiedLookups) -> None:
        self._lookups = lookups

    def __call__(
        self, ctx: RequestContext, key: WireCacheKey, tp_size: int
    ) -> CBUnifiedLookupResult | None:
        """A poll on the CPU pool: :meth:`UnifiedLookups.cb_unified_lookup`."""
        return self._lookups.cb_unified_lookup(ctx, key, tp_size)

    def try_inline(
        self, ctx: RequestContext, key: WireCacheKey, tp_size: int
    ) -> CBUnifiedLookupResult:
        """A first poll on the loop: :meth:`UnifiedLookups.try_inline`."""
        return self._lookups.try_inline(ctx, key, tp_size)
