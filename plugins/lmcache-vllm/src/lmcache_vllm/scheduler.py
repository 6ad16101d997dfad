"""The scheduler side of the connector, free of vLLM imports.

vLLM calls, per request: ``get_num_new_matched_tokens`` (possibly many times, until the
request is scheduled), ``update_state_after_alloc`` (after the blocks are allocated; a
second time, with ``num_external_tokens == 0``, once an asynchronous load finished), then
``build_connector_meta`` every step and ``request_finished`` once. This module keeps one
:class:`RequestTracker` per request and turns those calls into lookups on the server and
:class:`~lmcache_vllm.metadata.StepPlan` s for the workers.

Lookups are asynchronous: the first call submits LOOKUP and returns ``None`` ("ask me
again next step") until the server's prefetch status is in; the hit is then fixed for the
request, so repeated calls never count a chunk twice. A lookup slower than
``lookup_timeout``, or any lookup while the server is down, is a miss: a request never
waits on the cache longer than that.

The vLLM objects are read through a few attributes only (``request_id``,
``prompt_token_ids``, ``cache_salt``, ``kv_transfer_params``, ``all_token_ids``;
``get_block_ids()``; the scheduler output's new and cached request data), so the
harness's plain fakes and vLLM's real classes both fit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lmcache_core.client import CallTimeout
from lmcache_core.protocol.types import CacheKey, pack_token_ids
from lmcache_vllm.health import Health, Heartbeat
from lmcache_vllm.metadata import OpKind, StepPlan, TransferOp
from lmcache_vllm.rpc import BackgroundClient
from lmcache_vllm.settings import ConnectorSettings
from lmcache_vllm.stats import ConnectorStats, IntervalReporter, Role

logger = logging.getLogger(__name__)

SKIP_LOOKUP = "lmcache.skip_lookup"
SKIP_STORE = "lmcache.skip_store"
STATS_KEY = "lmcache_stats"
"""The key of the hit statistics in the ``kv_transfer_params`` vLLM returns."""


class LookupState(StrEnum):
    """Where a request's lookup is."""

    NONE = "none"
    PENDING = "pending"
    DONE = "done"


@dataclass
class RequestTracker:
    """What the scheduler side knows about one request.

    Attributes:
        request_id: vLLM's id.
        prompt: The prompt's token ids.
        cache_salt: The request's salt.
        request: The vLLM request object (for decode tokens when decode chunks are stored).
        skip_store: The request asked not to be stored.
        lookup: Lookup progress.
        lookup_future: The pending lookup (chunks hit, or an error).
        lookup_started: ``time.monotonic()`` of the submission.
        lookup_end: The token window the lookup asked for, ``[0, lookup_end)``.
        hit_tokens: Tokens the server holds for the request (chunk multiple).
        load_tokens: Tokens vLLM agreed to load (``num_external_tokens``).
        block_ids: KV block ids per group, from token 0.
        computed: Tokens computed once the current step ran.
        stored_until: Tokens up to which stores were planned (chunk multiple).
        stores_planned: Store ops planned for the request (then its blocks are freed only
            once the worker reports the stores finished).
        locks_released: The lookup's locks were released (no load followed).
    """

    request_id: str
    prompt: list[int]
    cache_salt: str = ""
    request: Any = None
    skip_store: bool = False
    lookup: LookupState = LookupState.NONE
    lookup_future: concurrent.futures.Future[int] | None = None
    lookup_started: float = 0.0
    lookup_end: int = 0
    hit_tokens: int = 0
    load_tokens: int = 0
    block_ids: list[list[int]] = field(default_factory=list)
    computed: int = 0
    stored_until: int = 0
    stores_planned: int = 0
    locks_released: bool = False


def request_params(request: Any) -> dict[str, Any]:
    """The request's ``kv_transfer_params`` (an empty dict when it has none)."""
    params = getattr(request, "kv_transfer_params", None)
    return dict(params) if isinstance(params, dict) else {}


def _flag(params: dict[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


class SchedulerSide:
    """The scheduler role: lookups, and the plan of each step's loads and stores.

    Args:
        settings: The connector's options.
        model_name: The model name in cache keys.
        world_size: KV sharding width (the keys' ``world_size``).
        block_size: vLLM's KV block size in tokens.
        client: A connected background client (tests may share one).

    Raises:
        ConnectionError: The server does not answer ``get_chunk_size`` within
            ``mq_timeout``.
        ValueError: The server's chunk size is not a multiple of ``block_size``.
    """

    def __init__(
        self,
        settings: ConnectorSettings,
        *,
        model_name: str,
        world_size: int,
        block_size: int,
        client: BackgroundClient | None = None,
    ) -> None:
        self.settings = settings
        self.model_name = model_name
        self.world_size = world_size
        self.block_size = block_size
        self._owns_client = client is None
        self.client, self.chunk_size = connect(settings, block_size, client, "scheduler")
        self.health = Health()
        self.stats = ConnectorStats()
        self._reporter = IntervalReporter(Role.SCHEDULER, self.stats, self.health)
        self.trackers: dict[str, RequestTracker] = {}
        self._pending_loads: list[TransferOp] = []
        self.heartbeat = Heartbeat(self.client, self.health, settings.heartbeat_interval)

    # -- lookups --------------------------------------------------------------------------

    def on_new_request(self, request: Any) -> None:
        """VLLM saw a new request: with ``eager_prefetch``, start its lookup now."""
        if self.settings.eager_prefetch:
            tracker = self._tracker(request)
            if tracker.lookup is LookupState.NONE:
                self._submit_lookup(tracker, request)

    def get_num_new_matched_tokens(
        self, request: Any, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        """Tokens beyond ``num_computed_tokens`` the server can supply.

        Returns:
            ``(None, False)`` while the lookup runs (vLLM asks again next step); otherwise
            ``(n, n > 0)``: ``n`` tokens to load asynchronously.
        """
        tracker = self._tracker(request)
        if tracker.lookup is LookupState.NONE:
            self._submit_lookup(tracker, request)
        if tracker.lookup is LookupState.PENDING and not self._collect_lookup(tracker):
            return None, False
        need = max(0, _offered(tracker) - num_computed_tokens)
        return need, need > 0

    def _submit_lookup(self, tracker: RequestTracker, request: Any) -> None:
        params = request_params(request)
        # Every whole chunk, the last one too: a prompt the server holds entirely is
        # offered minus its last token (_offered), so vLLM computes one token, not a chunk.
        end = len(tracker.prompt) // self.chunk_size * self.chunk_size
        tracker.lookup_end = end
        tracker.lookup_started = time.monotonic()
        self.stats.lookups += 1
        self.stats.lookup_tokens += end
        if end <= 0 or _flag(params, SKIP_LOOKUP) or not self.health.healthy:
            if end > 0 and not self.health.healthy:
                self.stats.lookups_degraded += 1
            tracker.lookup = LookupState.DONE
            tracker.hit_tokens = 0
            return
        key = self._key(tracker, end)
        tracker.lookup = LookupState.PENDING
        tracker.lookup_future = self.client.submit(self._lookup(key))

    async def _lookup(self, key: CacheKey) -> int:
        """LOOKUP, then poll the prefetch status; the chunks hit."""
        timeout = self.settings.lookup_timeout
        deadline = time.monotonic() + timeout
        call = self.client.call("lookup", key, self.world_size, timeout=timeout)
        await asyncio.wrap_future(call)
        delay = 0.0002
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimeout(f"lookup of {key.request_id}: no status within {timeout:g} s")
            status = await asyncio.wrap_future(
                self.client.call("query_prefetch_status", key.request_id, timeout=remaining)
            )
            if status is not None:
                return int(status)
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.005)

    def _collect_lookup(self, tracker: RequestTracker) -> bool:
        """Fix the hit once the lookup finished; False while it still runs."""
        future = tracker.lookup_future
        assert future is not None
        if not future.done():
            if time.monotonic() - tracker.lookup_started <= self.settings.lookup_timeout:
                return False
            future.cancel()
            self.stats.lookup_timeouts += 1
            self.health.mark_down("a lookup took longer than lookup_timeout")
            hit = 0
        else:
            try:
                hit = min(future.result() * self.chunk_size, tracker.lookup_end)
            except Exception as exc:  # noqa: BLE001 - any lookup failure is a miss
                logger.warning(
                    "lookup of %s failed, treated as a miss: %s", tracker.request_id, exc
                )
                self.stats.lookup_errors += 1
                if isinstance(exc, CallTimeout):
                    self.health.mark_down(f"lookup timed out: {exc}")
                hit = 0
        tracker.lookup = LookupState.DONE
        tracker.lookup_future = None
        tracker.hit_tokens = hit
        self.stats.hit_tokens += hit
        self.stats.add_lookup_latency(time.monotonic() - tracker.lookup_started)
        return True

    # -- allocation -----------------------------------------------------------------------

    def update_state_after_alloc(
        self, request: Any, block_ids: Sequence[Sequence[int]], num_external_tokens: int
    ) -> None:
        """Blocks were allocated; plan the load of ``num_external_tokens`` tokens.

        ``num_external_tokens == 0`` means no load follows: every lookup lock is released
        (also for the second call vLLM makes once an asynchronous load finished, which
        plans nothing new).
        """
        tracker = self._tracker(request)
        tracker.block_ids = [list(group) for group in block_ids]
        if num_external_tokens <= 0:
            if tracker.load_tokens == 0 and tracker.hit_tokens > 0 and not tracker.locks_released:
                tracker.locks_released = True
                self._free_locks(tracker, tracker.hit_tokens)
            return
        hit = tracker.hit_tokens
        offered = _offered(tracker)
        local = offered - num_external_tokens  # tokens vLLM's own prefix cache holds
        if local < 0 or num_external_tokens > offered:
            raise ValueError(
                f"request {tracker.request_id}: vLLM allocated {num_external_tokens} external "
                f"tokens but the connector offered {offered}"
            )
        start = local // self.chunk_size * self.chunk_size
        if start > 0:
            self._free_locks(tracker, start)
        tracker.load_tokens = num_external_tokens
        # stored_until stays: the first store covers the loaded chunks too. The server
        # skips chunks it holds (no copy), and after a failed load they are stored again.
        self._pending_loads.append(
            TransferOp(
                kind=OpKind.LOAD,
                request_id=tracker.request_id,
                token_ids=tracker.prompt[:hit],
                start=start,
                end=hit,
                block_ids=tracker.block_ids,
                skip_first_n_tokens=local - start,
                cache_salt=tracker.cache_salt,
            )
        )
        self.stats.planned_load_tokens += num_external_tokens

    def _free_locks(self, tracker: RequestTracker, end: int) -> None:
        """Release the lookup's read locks on ``[0, end)`` (fire and forget)."""
        if not self.health.healthy:
            return  # a dead server holds nothing; its TTL frees the locks otherwise
        key = self._key(tracker, end)
        self.client.call("free_lookup_locks", key, self.world_size, timeout=self._rpc_timeout)

    # -- steps ----------------------------------------------------------------------------

    def build_connector_meta(self, scheduler_output: Any) -> StepPlan:
        """This step's plan: the loads allocated since the last step, then new stores."""
        plan = StepPlan(ops=self._pending_loads)
        self._pending_loads = []
        for rid in getattr(scheduler_output, "preempted_req_ids", None) or ():
            self._preempted(rid)
            plan.preempted.append(rid)
        scheduled = dict(getattr(scheduler_output, "num_scheduled_tokens", {}) or {})
        for new in getattr(scheduler_output, "scheduled_new_reqs", ()) or ():
            tracker = self.trackers.get(new.req_id)
            if tracker is None:
                continue  # a request vLLM never asked us about (e.g. after a reset)
            tracker.block_ids = [list(g) for g in new.block_ids]
            tracker.computed = new.num_computed_tokens + scheduled.get(new.req_id, 0)
        cached = getattr(scheduler_output, "scheduled_cached_reqs", None)
        if cached is not None:
            self._cached(cached, scheduled)
        for tracker in self.trackers.values():
            op = self._store_op(tracker)
            if op is not None:
                plan.ops.append(op)
        return plan

    def _cached(self, cached: Any, scheduled: dict[str, int]) -> None:
        resumed = set(getattr(cached, "resumed_req_ids", None) or ())
        for index, rid in enumerate(cached.req_ids):
            tracker = self.trackers.get(rid)
            if tracker is None:
                continue
            new_blocks = cached.new_block_ids[index]
            if rid in resumed:
                # A resumed request's new_block_ids are all its blocks.
                tracker.block_ids = [list(g) for g in new_blocks] if new_blocks else []
            elif new_blocks:
                for group, extra in zip(tracker.block_ids, new_blocks, strict=False):
                    group.extend(extra)
            tracker.computed = cached.num_computed_tokens[index] + scheduled.get(rid, 0)

    def _store_op(self, tracker: RequestTracker) -> TransferOp | None:
        if tracker.skip_store or not tracker.block_ids or not self.health.healthy:
            return None
        tokens = tracker.prompt
        if self.settings.save_decode_cache and tracker.request is not None:
            tokens = list(getattr(tracker.request, "all_token_ids", tokens))
        ready = min(tracker.computed, len(tokens))
        covered = len(tracker.block_ids[0]) * self.block_size
        end = min(ready, covered) // self.chunk_size * self.chunk_size
        if end <= tracker.stored_until:
            return None
        op = TransferOp(
            kind=OpKind.STORE,
            request_id=tracker.request_id,
            token_ids=tokens[:end],
            start=tracker.stored_until,
            end=end,
            block_ids=tracker.block_ids,
            cache_salt=tracker.cache_salt,
        )
        tracker.stored_until = end
        tracker.stores_planned += 1
        self.stats.planned_store_tokens += end - op.start
        return op

    def _preempted(self, rid: str) -> None:
        """The request lost its blocks: its next scheduling looks up again."""
        tracker = self.trackers.get(rid)
        if tracker is None:
            return
        tracker.block_ids = []
        tracker.computed = 0
        tracker.load_tokens = 0
        tracker.lookup = LookupState.NONE
        tracker.hit_tokens = 0
        tracker.locks_released = False

    # -- end of a request -----------------------------------------------------------------

    def request_finished(self, request: Any) -> tuple[bool, dict[str, Any] | None]:
        """The request finished or was aborted: end its session.

        Returns:
            ``(delay_free, kv_transfer_params)``: the blocks stay allocated until the
            worker reports the request's stores finished when any was planned; the
            params carry the request's hit statistics under :data:`STATS_KEY`.
        """
        rid = str(request.request_id)
        tracker = self.trackers.pop(rid, None)
        if tracker is None:
            return False, None
        lookup = tracker.lookup_future
        if self.health.healthy:
            self.client.submit(self._end_session(rid, lookup))
        elif lookup is not None:
            lookup.cancel()
        stats = {
            "lookup_tokens": tracker.lookup_end,
            "hit_tokens": tracker.hit_tokens,
            "loaded_tokens": tracker.load_tokens,
            "stored_tokens": tracker.stored_until if tracker.stores_planned else 0,
            "prompt_tokens": len(tracker.prompt),
        }
        return tracker.stores_planned > 0, {STATS_KEY: stats}

    async def _end_session(self, rid: str, lookup: concurrent.futures.Future[int] | None) -> None:
        # END_SESSION after the lookup is answered: an END_SESSION that overtook its
        # LOOKUP would leave the lookup's locks to their TTL.
        if lookup is not None:
            try:
                await asyncio.wait_for(asyncio.wrap_future(lookup), self.settings.lookup_timeout)
            except (Exception, asyncio.CancelledError):
                logger.debug("lookup of %s ended before END_SESSION", rid, exc_info=True)
        try:
            await asyncio.wrap_future(
                self.client.call("end_session", rid, timeout=self._rpc_timeout)
            )
        except Exception as exc:  # noqa: BLE001 - the server's session TTL frees it otherwise
            logger.info("END_SESSION of %s failed: %s", rid, exc)

    def reset_cache(self) -> bool:
        """Clear the server's L1 (unlocked objects); False when it did not answer."""
        try:
            self.client.call_sync("clear", False, timeout=self._rpc_timeout)
        except Exception as exc:  # noqa: BLE001 - vLLM only logs the outcome
            logger.warning("reset_cache failed: %s", exc)
            return False
        return True

    def take_interval_stats(self) -> dict[str, Any]:
        """The scheduler's stats payload since the last call (:mod:`lmcache_vllm.stats`)."""
        return self._reporter.take()

    def shutdown(self) -> None:
        """Stop the heartbeat and close the client."""
        self.heartbeat.stop()
        if self._owns_client:
            self.client.close()

    # -- helpers --------------------------------------------------------------------------

    @property
    def _rpc_timeout(self) -> float:
        return self.settings.transfer_timeout

    def _tracker(self, request: Any) -> RequestTracker:
        rid = str(request.request_id)
        tracker = self.trackers.get(rid)
        if tracker is None:
            params = request_params(request)
            tracker = RequestTracker(
                request_id=rid,
                prompt=list(request.prompt_token_ids or ()),
                cache_salt=getattr(request, "cache_salt", None) or "",
                request=request,
                skip_store=_flag(params, SKIP_STORE),
            )
            self.trackers[rid] = tracker
        return tracker

    def _key(self, tracker: RequestTracker, end: int) -> CacheKey:
        return CacheKey(
            model_name=self.model_name,
            world_size=self.world_size,
            worker_id=None,
            token_ids=pack_token_ids(tracker.prompt[:end]),
            start=0,
            end=end,
            request_id=tracker.request_id,
            cache_salt=tracker.cache_salt,
        )


def connect(
    settings: ConnectorSettings, block_size: int, client: BackgroundClient | None, name: str
) -> tuple[BackgroundClient, int]:
    """A background client (``client``, or a new one named ``name``) and the chunk size.

    A client made here is closed again when the server does not answer or its
    chunk size does not fit; a given one is the caller's.

    Raises:
        ConnectionError: No answer within ``mq_timeout``.
        ValueError: The chunk size is not a multiple of ``block_size``.
    """
    connected = client or BackgroundClient(settings.server_url, name=name)
    try:
        return connected, fetch_chunk_size(connected, settings, block_size)
    except BaseException:
        if client is None:
            connected.close()
        raise


def fetch_chunk_size(client: BackgroundClient, settings: ConnectorSettings, block_size: int) -> int:
    """The server's chunk size, checked against vLLM's block size.

    Raises:
        ConnectionError: No answer within ``mq_timeout``.
        ValueError: The chunk size is not a multiple of ``block_size``.
    """
    try:
        chunk = int(client.call_sync("get_chunk_size", timeout=settings.mq_timeout))
    except (CallTimeout, concurrent.futures.TimeoutError):
        raise ConnectionError(
            f"the LMCache server at {settings.server_url} did not answer within "
            f"lmcache.mp.mq_timeout={settings.mq_timeout:g} s: is `lmcache server` running "
            "there (check lmcache.mp.host and lmcache.mp.port)?"
        ) from None
    if chunk <= 0 or chunk % block_size:
        raise ValueError(
            f"the server's --chunk-size {chunk} is not a multiple of vLLM's block size "
            f"{block_size} (vLLM's CPU backend uses 128)"
        )
    return chunk


def _offered(tracker: RequestTracker) -> int:
    """Tokens of the hit vLLM may take as computed.

    vLLM computes at least the last prompt token (it needs its logits): a hit covering the
    whole prompt is offered minus that token, and the load still writes the whole last
    chunk (vLLM then recomputes that one token's KV over it, to the same values). A prompt
    of 2048 tokens fully cached thus computes 1 token, not the last 256-token chunk.
    """
    return min(tracker.hit_tokens, len(tracker.prompt) - 1)
