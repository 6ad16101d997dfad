"""The lookup service: find the cached prefix, lock it, prefetch the rest from L2.

``lookup`` hashes the request's full chunks, read-locks the longest prefix that
L1 holds for every KV rank (:meth:`~lmcache_core.storage.l1.L1Manager.lock_prefix`)
and records the result as the session's :class:`~lmcache_core.engine.sessions.LookupJob`.
When L2 may hold more, the acknowledgement goes out at once and a
:class:`~lmcache_core.engine.prefetch_pool.PrefetchPool` thread loads the rest;
``query_prefetch_status`` / ``wait_prefetch_status`` report the job's hit count.
The locks the job holds are consumed by retrieves, released by
``free_lookup_locks``, a newer lookup or the end of the session.

Nothing here depends on how an engine moves KV: any engine that serves prefix
lookups reuses this object and calls :meth:`LookupService.consume_locks` after
each retrieve.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from lmcache_core.engine.chunk_keys import ChunkKeys, PrefixKeys
from lmcache_core.engine.contract import Handler, WouldBlock
from lmcache_core.engine.miss_explainer import MissExplainer
from lmcache_core.engine.prefetch_pool import PrefetchPool
from lmcache_core.engine.request_events import RequestEvents
from lmcache_core.engine.sessions import FINISHED, LookupJob, Session, SessionTable
from lmcache_core.hashing import seed_identity
from lmcache_core.observability.miss_causes import MissCause
from lmcache_core.protocol.errors import BadRequestError, NotSupportedError
from lmcache_core.protocol.types import HashLookupKey, WireCacheKey
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.l2.tier import L2Tier, PrefetchResult, Retention

if TYPE_CHECKING:
    from lmcache_core.engine.contract import RequestContext

MAX_WAIT_SECONDS = 60.0
"""The longest ``wait_prefetch_status`` waits, whatever the client asks."""

INLINE_MAX_KEYS = 128
"""Object keys (chunks x ranks) up to which a full L1 hit is served on the request loop.

About 60 us of work at 64 in-process (docs/benchmarks.md, "The lookup path,
third pass"; 100 us before it): less than the pool hop it saves, and no longer
than the loop waits for the GIL behind a pool thread anyway.
"""

ObjectSize = Callable[[str, int], int | None]
"""``(model_name, world_size) -> bytes of one object``, None while no worker told us."""


class LookupService:
    """Lookups, prefetch status, and the read locks a request holds.

    Args:
        l1: The L1 tier.
        l2: The L2 tier, or None.
        chunk_keys: Hashes and object keys of requests.
        request_events: Where ``mp.*`` events go.
        prefetch_pool: Runs L2 prefetches after the acknowledgement.
        object_nbytes: The object size of a model and sharding (prefetching
            needs it; unknown means no prefetch).
        session_ttl_s: Idle time after which a request's session ends.
        explainer: Explains each lookup's misses and keeps the recent ones
            (the server's, so ``GET /lookups`` sees them; a private one if None).
    """

    def __init__(
        self,
        *,
        l1: L1Manager,
        l2: L2Tier | None,
        chunk_keys: ChunkKeys,
        request_events: RequestEvents,
        prefetch_pool: PrefetchPool,
        object_nbytes: ObjectSize,
        session_ttl_s: float,
        explainer: MissExplainer | None = None,
    ) -> None:
        self.l1 = l1
        self.explainer = explainer if explainer is not None else MissExplainer()
        self.l2 = l2
        self.chunk_keys = chunk_keys
        self.chunk_size = chunk_keys.chunk_size
        self.request_events = request_events
        self.prefetch_pool = prefetch_pool
        self.object_nbytes = object_nbytes
        self.given_up = 0
        """Lookup jobs answered at their deadline without their prefetch (``/status``)."""
        self.sessions = SessionTable(
            session_ttl_s,
            chunk_keys.tokens.new_request,
            self.release,
            on_end=request_events.request_ended,
        )  # its clock is the L1's (monotonic), so lock deadlines compare

    def handlers(self) -> dict[str, Handler]:
        """Operation name -> handler."""
        return {
            "lookup": _LookupHandler(self),
            "lookup_hashes": HashLookupHandler(self),
            "query_prefetch_status": self.query_prefetch_status,
            "wait_prefetch_status": self.wait_prefetch_status,
            "free_lookup_locks": self.free_lookup_locks,
            "end_session": self.end_session,
        }

    # -- lookup ---------------------------------------------------------------------------

    def lookup(
        self,
        ctx: RequestContext,
        key: WireCacheKey,
        _tp_size: int,
        *,
        retention: Retention = Retention.PREFIX,
        hashes: list[bytes] | None = None,
    ) -> None:
        """Find the longest prefix present for every rank, read-lock it, record the job.

        The reply (the acknowledgement) is sent only after the job is recorded, so
        a status query that follows the ack always sees it. With
        ``retention=Retention.SEGMENTED`` (an engine's call, never the wire's) the
        L2 prefetch also keeps the chunks past a gap, read-locked for the request
        in :attr:`LookupJob.post_gap`; the hit count is the leading run still.
        ``hashes``: the chunk hashes the client sent (``lookup_hashes``, already
        checked), used instead of hashing ``key``'s tokens.
        """
        readers = max(1, key.num_kv_readers)
        num_chunks = key.end // self.chunk_size
        session = self.sessions.get(key.request_id)
        ranks = [key.worker_id] if key.worker_id is not None else range(key.world_size)
        with session.mutex:
            # Hash first: bad tokens fail the lookup before it replaces the last job.
            if hashes is None:
                hashes = self.chunk_keys.hashes(key, session, num_chunks)
            started = self.request_events.lookup_started(key, session, hashes)
            self._release_job(session)
            job = LookupJob(deadline=ctx.deadline)
            session.job = job
            width = len(ranks)
            # chunk-major: every rank of chunk 0, then of chunk 1, ...; rows: one per chunk
            flat, rows = self.chunk_keys.prefix_keys(key, hashes)
            # Taken before the locks, so the session never outlives the grants it counts.
            lock_deadline = self.sessions.clock() + self.l1.read_ttl_s
            hit = self.l1.lock_prefix(flat, width, readers)
            session.take_locks(flat[: hit * width], readers, lock_deadline)
            hit_keys = rows[:hit]
            nbytes = self.object_nbytes(key.model_name, key.world_size)
            if hit == num_chunks or self.l2 is None or nbytes is None:
                job.finish(hit, hit_keys)
                not_asked = None if self.l2 is None or hit == num_chunks else MissCause.NO_WORKER
                self._finished(key, started, flat, width, hit, not_asked=not_asked)
                return
            rest = rows[hit:num_chunks]
            job.hit_keys = hit_keys  # what a job given up at its deadline reports
        # The ack goes out now; the job finishes when L2 has answered (queries say None),
        # or at its deadline with the L1 hits alone (see query_prefetch_status).
        if self.prefetch_pool.submit(
            self._prefetch,
            session,
            job,
            hit_keys,
            rest,
            nbytes,
            readers,
            (key, started, flat),
            retention,
        ):
            return
        with session.mutex:  # the pool's queue is full: answer with the L1 hit, now
            job.finish(hit, hit_keys)
        self._finished(key, started, flat, width, hit, not_asked=MissCause.PREFETCH_LIMIT)

    def try_lookup_inline(
        self,
        ctx: RequestContext,
        key: WireCacheKey,
        _tp_size: int,
        *,
        partial: bool = False,
        hashes: list[bytes] | None = None,
    ) -> None:
        """:meth:`lookup` of a full L1 hit, on the request loop, without waiting.

        Served only when nothing can make it wait: at most :data:`INLINE_MAX_KEYS`
        keys, a session that exists or has room, its mutex free, no earlier job
        to release (that unlocks L1), the L1 lock free right now, and every
        chunk resident for every rank (so no L2 prefetch and no miss to explain
        against L1). Otherwise :class:`WouldBlock` is raised before any state
        changes (the token hashes it computed stay cached) and the request goes
        to the CPU pool as before. The result is :meth:`lookup`'s, event included.

        With ``partial`` (an engine's call, never the wire's: the blend engine's
        prefix leg) a partial L1 hit is served too when its misses need no L2
        query (no L2 tier, or no worker to size a prefetch): L1's longest
        prefix is locked and the misses explained in one non-blocking round.

        Raises:
            WouldBlock: Not served; run :meth:`lookup` on the pool.
            BadRequestError: The tokens cannot be decoded, or are too few.
        """
        num_chunks = key.end // self.chunk_size
        width = 1 if key.worker_id is not None else key.world_size
        if num_chunks * width > INLINE_MAX_KEYS:
            raise WouldBlock
        session = self.sessions.get_if_room(key.request_id)
        if session is None or not session.mutex.acquire(blocking=False):
            raise WouldBlock
        try:
            if session.job is not None:
                raise WouldBlock
            if hashes is None:
                hashes = self.chunk_keys.hashes(key, session, num_chunks)
            flat, rows = self.chunk_keys.prefix_keys(key, hashes)
            readers = max(1, key.num_kv_readers)
            lock_deadline = self.sessions.clock() + self.l1.read_ttl_s
            if partial and (
                self.l2 is None or self.object_nbytes(key.model_name, key.world_size) is None
            ):
                self._partial_inline(
                    ctx, key, session, hashes, (flat, rows), readers, lock_deadline
                )
                return
            if not self.l1.try_lock_all(flat, readers):
                raise WouldBlock
            started = self.request_events.lookup_started(key, session, hashes)
            session.take_locks(flat, readers, lock_deadline)
            # Finished as it is made: no Event to build (FINISHED is already set).
            session.job = LookupJob(num_chunks, rows, FINISHED, deadline=ctx.deadline)
            self._finished(key, started, flat, width, num_chunks)
        finally:
            session.mutex.release()

    def _partial_inline(
        self,
        ctx: RequestContext,
        key: WireCacheKey,
        session: Session,
        hashes: list[bytes],
        keys: PrefixKeys,
        readers: int,
        lock_deadline: float,
    ) -> None:
        """The inline lookup of a prefix whose misses no L2 could fill (session mutex held)."""
        flat, rows = keys
        width = 1 if key.worker_id is not None else key.world_size
        locked = self.l1.try_lock_prefix(flat, width, readers)
        if locked is None:
            raise WouldBlock
        hit, presence = locked
        started = self.request_events.lookup_started(key, session, hashes)
        session.take_locks(flat[: hit * width], readers, lock_deadline)
        session.job = LookupJob(hit, rows[:hit], FINISHED, deadline=ctx.deadline)
        num_chunks = len(rows)
        not_asked = None if self.l2 is None or hit == num_chunks else MissCause.NO_WORKER
        self._finished(key, started, flat, width, hit, not_asked=not_asked, presence=presence)

    def _finished(
        self,
        key: WireCacheKey,
        started: float,
        flat: list[ObjectKey],
        width: int,
        l1_chunks: int,
        result: PrefetchResult | None = None,
        not_asked: MissCause | None = None,
        record: bool = True,
        presence: Sequence[int] | None = None,
    ) -> None:
        """Explain the lookup (``record``: for ``GET /lookups``) and publish its end event."""
        l2_chunks = result.chunks if result is not None else 0
        sources = self._sources(result) if result is not None and l2_chunks else []
        explanation = self.explainer.explain(
            key,
            self.chunk_size,
            flat,
            width,
            self.l1,
            l1_chunks=l1_chunks,
            l2_chunks=l2_chunks,
            l2_sources=[(s["tier"], s["keys"] / width) for s in sources],
            l2_misses=result.misses if result is not None else (),
            not_asked=not_asked,
            started=started,
            record=record,
            presence=presence,
        )
        self.request_events.lookup_finished(
            key, started, l1_chunks, l2_chunks, width, sources, explanation
        )

    def _prefetch(
        self,
        session: Session,
        job: LookupJob,
        hit_keys: list[list[ObjectKey]],
        rest: list[list[ObjectKey]],
        nbytes: int,
        readers: int,
        announced: tuple[WireCacheKey, float, list[ObjectKey]],
        retention: Retention = Retention.PREFIX,
    ) -> None:
        assert self.l2 is not None
        deadline = self.sessions.clock() + self.l1.read_ttl_s
        result = PrefetchResult(0, ())
        try:
            if time.monotonic() < job.deadline:
                result = self.l2.prefetch(rest, nbytes, readers, job.deadline, retention=retention)
            else:  # it waited in the queue past its deadline
                result = PrefetchResult(0, (), (MissCause.L2_TIMEOUT,) * len(rest))
        finally:
            loaded = result.chunks
            post_gap = {len(hit_keys) + i: rest[i] for i in result.post_gap}
            keys = [k for row in rest[:loaded] for k in row]
            keys += [k for row in post_gap.values() for k in row]
            with session.mutex:
                current = session.job is job  # else replaced: its explanation is not kept
                if current and not job.gave_up:
                    session.take_locks(keys, readers, deadline)
                    job.post_gap = post_gap
                    job.finish(len(hit_keys) + loaded, hit_keys + rest[:loaded])
                else:  # replaced, ended or given up meanwhile: nobody will read these
                    self.l1.unlock(keys, readers)
                    if not job.done.is_set():
                        job.finish(len(hit_keys), hit_keys)
                    # Given up at its deadline, or replaced by a newer lookup or the end.
                    cause = MissCause.L2_TIMEOUT if job.gave_up else MissCause.SUPERSEDED
                    result = PrefetchResult(0, (), (cause,) * len(rest))
            key, started, flat = announced
            width = len(rest[0]) if rest else 1
            # A superseded lookup's explanation must not replace its successor's.
            self._finished(key, started, flat, width, len(hit_keys), result, record=current)

    def _sources(self, result: PrefetchResult) -> list[dict[str, Any]]:
        """Which L2 adapters supplied a prefetch's objects, for the lookup event."""
        assert self.l2 is not None
        return [
            {
                "l2_name": adapter.name,
                "adapter_index": index,
                "tier": f"l2[{index + 1}]:{adapter.name}",
                "keys": count,
            }
            for index, (adapter, count) in enumerate(
                zip(self.l2.adapters, result.keys_by_adapter, strict=True)
            )
            if count
        ]

    # -- prefetch status ----------------------------------------------------------------

    def query_prefetch_status(self, _ctx: RequestContext, request_id: str) -> int | None:
        """Hit chunks (once), None while running, 0 for an unknown request.

        A job whose deadline has passed is given up: it reports its L1 hits, and
        the prefetch, when it ends, releases what it loaded. So a client polling
        for a lookup's result gets an answer within ``--request-deadline-seconds``.
        """
        session = self.sessions.peek(request_id)
        job = session.job if session is not None else None
        if job is None or job.reported:
            return 0
        if job.hit_chunks is None:
            if time.monotonic() < job.deadline:
                return None
            assert session is not None
            self._give_up(session, job)
        job.reported = True
        return job.hit_chunks

    def wait_prefetch_status(
        self, ctx: RequestContext, request_id: str, timeout: float
    ) -> int | None:
        """Like :meth:`query_prefetch_status`, waiting up to ``timeout``.

        The wait also ends at the job's deadline (then the job is given up and
        answers its L1 hits), at this request's own deadline, and after 60 s.
        """
        session = self.sessions.peek(request_id)
        job = session.job if session is not None else None
        if job is not None:
            now = time.monotonic()
            wait = min(timeout, MAX_WAIT_SECONDS, job.deadline - now, ctx.deadline - now)
            job.done.wait(max(wait, 0.0))
            if not job.done.is_set() and time.monotonic() < job.deadline:
                return None
        return self.query_prefetch_status(ctx, request_id)

    def _give_up(self, session: Session, job: LookupJob) -> None:
        """Finish a job at its deadline with the L1 hits it started with."""
        with session.mutex:
            if job.hit_chunks is None:
                job.gave_up = True
                job.finish(len(job.hit_keys), job.hit_keys)
                self.given_up += 1

    # -- the locks a request holds ------------------------------------------------------

    def free_lookup_locks(self, _ctx: RequestContext, key: WireCacheKey, _tp_size: int) -> None:
        """Release the lookup's remaining locks on the chunks of ``[start, end)``."""
        session = self.sessions.peek(key.request_id)
        if session is None:
            return
        with session.mutex:
            job = session.job
            if job is None or job.hit_chunks is None:
                return
            first = key.start // self.chunk_size
            end = -(-key.end // self.chunk_size)
            last = min(end, job.hit_chunks)
            keys = [k for row in job.hit_keys[first:last] for k in row]
            keys += [k for i, row in job.post_gap.items() if first <= i < end for k in row]
            self.release(session.give_back(keys, now=self.sessions.clock()))

    def end_session(self, _ctx: RequestContext, request_id: str) -> None:
        """End the request: release its locks and refresh its chunks in the policy."""
        session = self.sessions.end(request_id)
        if session is not None and session.job is not None:
            self.l1.touch([k for row in session.job.hit_keys for k in row])

    def consume_locks(self, session: Session, keys: Sequence[ObjectKey]) -> None:
        """A retrieve read ``keys``: give back one of the lookup's locks on each."""
        with session.mutex:
            self.release(session.give_back(keys, 1, self.sessions.clock()))

    def release(self, held: dict[ObjectKey, int]) -> None:
        """Unlock what a session gave back (key -> read locks), one L1 call per count."""
        by_count: dict[int, list[ObjectKey]] = {}
        for key, count in held.items():
            by_count.setdefault(count, []).append(key)
        for count, keys in by_count.items():
            self.l1.unlock(keys, count)

    def _release_job(self, session: Session) -> None:
        """A new lookup replaces the previous one: release its unconsumed locks."""
        if session.job is None:
            return
        keys = [k for row in session.job.hit_keys for k in row]
        keys += [k for row in session.job.post_gap.values() for k in row]
        self.release(session.give_back(keys, now=self.sessions.clock()))
        session.job = None


class _LookupHandler:
    """The ``lookup`` handler: :meth:`LookupService.lookup`, with an inline attempt.

    The request server calls ``try_inline`` on its loop first and, when that
    raises :class:`WouldBlock`, the handler itself on the CPU pool.
    """

    def __init__(self, service: LookupService) -> None:
        self._service = service

    def __call__(self, ctx: RequestContext, key: WireCacheKey, tp_size: int) -> None:
        self._service.lookup(ctx, key, tp_size)

    def try_inline(self, ctx: RequestContext, key: WireCacheKey, tp_size: int) -> None:
        self._service.try_lookup_inline(ctx, key, tp_size)


def _placeholder_tokens(count: int) -> msgspec.Raw:
    """A msgpack array32 header announcing ``count`` tokens, with no tokens after it.

    Stands for the tokens of a ``lookup_hashes`` key in the :class:`WireCacheKey`
    the lookup path reads (its length check reads only the header). Nothing on
    that path decodes tokens when the hashes are given; anything that tried would
    fail loudly on the truncated array instead of seeing other tokens.
    """
    return msgspec.Raw(b"\xdd" + count.to_bytes(4, "big"))


class HashLookupHandler:
    """The ``lookup_hashes`` handler: a lookup whose key carries the chunk hashes.

    The key is checked against this server's hashing (algorithm, seed, digest
    length, one hash per complete chunk of ``[0, end)``), turned into the
    :class:`WireCacheKey` the token form would have decoded to, and served by
    :meth:`LookupService.lookup` (inline first, as ``lookup``) with the hashes
    given: sessions, locks, prefetch, explanations and events are the token
    form's. docs/protocol.md, "Hash-carrying lookups".
    """

    def __init__(self, service: LookupService) -> None:
        self._service = service
        hasher = service.chunk_keys.tokens.hasher
        self.algorithm = hasher.name
        self.seed = seed_identity(hasher)
        self.digest_size = len(hasher.none_hash)

    def _checked(self, key: HashLookupKey) -> tuple[WireCacheKey, list[bytes]]:
        """The token form's key and the hashes, or :class:`BadRequestError`."""
        if key.hash_algorithm != self.algorithm:
            raise BadRequestError(
                f"lookup_hashes: hashes made with {key.hash_algorithm!r}, "
                f"this server hashes with {self.algorithm!r}: send the tokens"
            )
        if self.seed is None or key.hash_seed != self.seed:
            raise BadRequestError(
                f"lookup_hashes: {self.algorithm} hashes depend on a seed that differs "
                "from this server's (or the server's is random): send the tokens"
            )
        hashes = key.chunk_hashes
        expected = key.end // self._service.chunk_size if key.end >= 0 else -1
        if len(hashes) != expected:
            raise BadRequestError(
                f"lookup_hashes: {len(hashes)} hashes for end={key.end}, "
                f"chunk size {self._service.chunk_size}: expected {expected}"
            )
        size = self.digest_size
        if any(len(h) != size for h in hashes):
            raise BadRequestError(f"lookup_hashes: every {self.algorithm} hash is {size} bytes")
        try:
            wire = WireCacheKey(
                model_name=key.model_name,
                world_size=key.world_size,
                worker_id=key.worker_id,
                token_ids=_placeholder_tokens(key.end),
                start=key.start,
                end=key.end,
                request_id=key.request_id,
                cache_salt=key.cache_salt,
                request_configs=key.request_configs,
                num_kv_readers=key.num_kv_readers,
            )
        except ValueError as exc:
            raise BadRequestError(f"lookup_hashes: {exc}") from None
        return wire, hashes

    def __call__(self, ctx: RequestContext, key: HashLookupKey, tp_size: int) -> None:
        """Serve the lookup on the CPU pool."""
        wire, hashes = self._checked(key)
        self._service.lookup(ctx, wire, tp_size, hashes=hashes)

    def try_inline(self, ctx: RequestContext, key: HashLookupKey, tp_size: int) -> None:
        """Serve a full L1 hit on the request loop, or raise :class:`WouldBlock`."""
        wire, hashes = self._checked(key)
        self._service.try_lookup_inline(ctx, wire, tp_size, hashes=hashes)


def refuse_hash_lookups(_ctx: RequestContext, _key: HashLookupKey, _tp_size: int) -> None:
    """``lookup_hashes`` on an engine that needs tokens (:attr:`Engine.needs_tokens`).

    Raises:
        NotSupportedError: Always; the client sends the token form instead.
    """
    raise NotSupportedError(
        "lookup_hashes: this server's engine needs the token ids themselves "
        "(it fingerprints token content): send a token lookup"
    )
