"""The operations of the MP server as client methods, shared by both clients.

Each method builds the argument list of one operation and hands it to
``_invoke``; the sync client returns the result, the asyncio client a coroutine.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from lmcache_core.errors import LMCacheError
from lmcache_core.protocol.codec import encode_device_handle
from lmcache_core.protocol.types import (
    AnyDeviceHandle,
    BlockAllocationRecord,
    CacheKey,
    EngineDrivenRegistration,
    EngineGroupInfo,
    HashLookupKey,
)

DEFAULT_TIMEOUT_SECONDS = 30.0


class CallTimeout(LMCacheError, TimeoutError):
    """The server did not answer within the call's timeout."""


class ConnectionLost(CallTimeout):
    """The connection broke with the call in flight: its reply can never arrive.

    Raised at once rather than at the call's timeout (ZeroMQ reconnects by itself, and
    the server cannot route a reply to the old connection). A :class:`CallTimeout`, so
    callers that treat a timed-out call as a failed one handle it the same way. Only
    non-idempotent calls raise it; idempotent ones are re-sent (see
    :mod:`lmcache_core.client.connection_watch`).
    """


def normalize_url(url: str) -> str:
    """``host:port`` -> ``tcp://host:port``; other URLs are kept."""
    return url if "://" in url else f"tcp://{url}"


class ClientMethods(abc.ABC):
    """One method per operation; subclasses implement ``_invoke``."""

    @abc.abstractmethod
    def _invoke(self, op: str, args: Sequence[Any], timeout: float | None) -> Any:
        """Send ``op`` with ``args``; the result (sync) or an awaitable of it (async)."""

    def ping(self, instance_id: int | None = None, *, timeout: float | None = None) -> Any:
        """Liveness probe; refreshes ``instance_id``'s heartbeat. False: re-register."""
        return self._invoke("ping", [instance_id], timeout)

    def noop(self, *, timeout: float | None = None) -> Any:
        """A round trip that does nothing (returns "OK")."""
        return self._invoke("noop", [], timeout)

    def get_chunk_size(self, *, timeout: float | None = None) -> Any:
        """The server's ``--chunk-size``."""
        return self._invoke("get_chunk_size", [], timeout)

    def get_experimental(self, *, timeout: float | None = None) -> Any:
        """The server's optional capabilities."""
        return self._invoke("get_experimental", [], timeout)

    def register_kv_cache(
        self,
        instance_id: int,
        handles: Sequence[AnyDeviceHandle],
        model_name: str,
        world_size: int,
        *,
        engine_type: str = "vllm",
        layout_hints: dict[str, Any] | None = None,
        engine_group_infos: Sequence[EngineGroupInfo] = (),
        timeout: float | None = None,
    ) -> Any:
        """Register a worker's paged KV cache (one handle per layer)."""
        wrapped = [encode_device_handle(h) for h in handles]
        args = [
            instance_id,
            wrapped,
            model_name,
            world_size,
            engine_type,
            dict(layout_hints or {}),
            list(engine_group_infos),
        ]
        return self._invoke("register_kv_cache", args, timeout)

    def unregister_kv_cache(self, instance_id: int, *, timeout: float | None = None) -> Any:
        """Forget a worker's KV cache and release its mappings."""
        return self._invoke("unregister_kv_cache", [instance_id], timeout)

    def lookup(self, key: CacheKey, tp_size: int = 1, *, timeout: float | None = None) -> Any:
        """Start a prefix lookup (acknowledged once the job is registered)."""
        return self._invoke("lookup", [key, tp_size], timeout)

    def lookup_hashes(
        self, key: HashLookupKey, tp_size: int = 1, *, timeout: float | None = None
    ) -> Any:
        """``lookup`` with a key that carries chunk hashes (ours; see HashLookupKey)."""
        return self._invoke("lookup_hashes", [key, tp_size], timeout)

    def query_prefetch_status(self, request_id: str, *, timeout: float | None = None) -> Any:
        """Hit chunks of a finished lookup (once), or None while it runs."""
        return self._invoke("query_prefetch_status", [request_id], timeout)

    def wait_prefetch_status(
        self, request_id: str, wait_seconds: float, *, timeout: float | None = None
    ) -> Any:
        """Like :meth:`query_prefetch_status`, waiting up to ``wait_seconds``."""
        budget = timeout if timeout is not None else wait_seconds + DEFAULT_TIMEOUT_SECONDS
        return self._invoke("wait_prefetch_status", [request_id, float(wait_seconds)], budget)

    def free_lookup_locks(
        self, key: CacheKey, tp_size: int = 1, *, timeout: float | None = None
    ) -> Any:
        """Release the read locks a lookup took in ``[key.start, key.end)``."""
        return self._invoke("free_lookup_locks", [key, tp_size], timeout)

    def end_session(self, request_id: str, *, timeout: float | None = None) -> Any:
        """Release what the request still holds."""
        return self._invoke("end_session", [request_id], timeout)

    def store(
        self,
        key: CacheKey,
        instance_id: int,
        block_ids: Sequence[Sequence[int]],
        event_handle: bytes = b"",
        *,
        timeout: float | None = None,
    ) -> Any:
        """Copy ``[key.start, key.end)`` from the worker's KV blocks into the cache."""
        args = [key, instance_id, [list(g) for g in block_ids], event_handle]
        return self._invoke("store", args, timeout)

    def retrieve(
        self,
        key: CacheKey,
        instance_id: int,
        block_ids: Sequence[Sequence[int]],
        event_handle: bytes = b"",
        skip_first_n_tokens: int = 0,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Copy looked-up chunks back into the worker's KV blocks."""
        args = [key, instance_id, [list(g) for g in block_ids], event_handle, skip_first_n_tokens]
        return self._invoke("retrieve", args, timeout)

    def register_engine_driven(
        self, payload: EngineDrivenRegistration, *, timeout: float | None = None
    ) -> Any:
        """Register an engine-driven worker; the reply names the L1 pool."""
        return self._invoke("register_kv_cache_engine_driven_context", [payload], timeout)

    def unregister_engine_driven(self, instance_id: int, *, timeout: float | None = None) -> Any:
        """Unregister an engine-driven worker."""
        return self._invoke("unregister_kv_cache_engine_driven_context", [instance_id], timeout)

    def prepare_store(
        self, key: CacheKey, instance_id: int, *, timeout: float | None = None
    ) -> Any:
        """Reserve L1 slots for an engine-driven store."""
        return self._invoke("prepare_store", [key, instance_id], timeout)

    def commit_store(
        self, key: CacheKey, instance_id: int, data: bytes = b"", *, timeout: float | None = None
    ) -> Any:
        """Commit the reserved slots (``data`` empty) or store inline bytes."""
        return self._invoke("commit_store", [key, instance_id, data], timeout)

    def prepare_retrieve(
        self, key: CacheKey, instance_id: int, *, timeout: float | None = None
    ) -> Any:
        """Locate (and lock) the chunks of an engine-driven retrieve."""
        return self._invoke("prepare_retrieve", [key, instance_id], timeout)

    def commit_retrieve(
        self, key: CacheKey, instance_id: int, *, timeout: float | None = None
    ) -> Any:
        """Release what :meth:`prepare_retrieve` locked."""
        return self._invoke("commit_retrieve", [key, instance_id], timeout)

    def clear(self, force: bool = False, *, timeout: float | None = None) -> Any:
        """Clear L1 (unlocked objects only unless ``force``)."""
        return self._invoke("clear", [force], timeout)

    def report_block_allocation(
        self,
        instance_id: int,
        model_name: str,
        records: Sequence[BlockAllocationRecord],
        *,
        timeout: float | None = None,
    ) -> Any:
        """Report a scheduler step's new blocks (observability)."""
        return self._invoke(
            "report_block_allocation", [instance_id, model_name, list(records)], timeout
        )
