"""The vLLM shim: ``LMCacheMPConnector``, the only module of this package that imports vLLM.

Load it with ``"kv_connector": "LMCacheMPConnector", "kv_connector_module_path":
"lmcache_vllm.connector"``. Every method delegates to
:class:`~lmcache_vllm.scheduler.SchedulerSide` or :class:`~lmcache_vllm.worker.WorkerSide`
(plain Python, tested without vLLM); this module only adapts vLLM's types: it reads the
config, wraps the step plan in a ``KVConnectorMetadata`` and reports stats.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    SupportsHMA,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats

from lmcache_vllm.metadata import StepPlan
from lmcache_vllm.scheduler import SchedulerSide
from lmcache_vllm.settings import ConnectorSettings
from lmcache_vllm.worker import WorkerSide

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_COUNTERS = ("loads_ok", "loads_failed", "stores_ok", "stores_dropped")


class LMCacheStepMetadata(KVConnectorMetadata):
    """The scheduler's :class:`~lmcache_vllm.metadata.StepPlan`, as vLLM carries it."""

    def __init__(self, plan: StepPlan) -> None:
        self.plan = plan


class LMCacheConnectorStats(KVConnectorStats):
    """Worker transfer counters of one logging interval (summed across workers)."""

    def reset(self) -> None:
        """Zero the counters."""
        self.data = dict.fromkeys(_COUNTERS, 0)

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        """Add another worker's (or interval's) counters."""
        for name in _COUNTERS:
            self.data[name] = int(self.data.get(name, 0)) + int(other.data.get(name, 0))
        return self

    def reduce(self) -> dict[str, int | float]:
        """The counters, for vLLM's "KV Transfer metrics" log line."""
        return {name: int(self.data.get(name, 0)) for name in _COUNTERS}

    def is_empty(self) -> bool:
        """No transfer happened."""
        return not any(int(self.data.get(name, 0)) for name in _COUNTERS)


class LMCacheMPConnector(KVConnectorBase_V1, SupportsHMA):
    """vLLM's KV connector API on an LMCache MP server, through ``lmcache_core.client``.

    Args:
        vllm_config: vLLM's config (``kv_transfer_config.kv_connector_extra_config``
            holds the ``lmcache.mp.*`` options).
        role: Scheduler or worker.
        kv_cache_config: vLLM's KV cache config (one KV cache group is supported).
    """

    def __init__(
        self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any = None
    ) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        groups = getattr(kv_cache_config, "kv_cache_groups", None) or ()
        if len(groups) > 1:
            raise NotImplementedError(
                f"lmcache_vllm's connector supports one KV cache group; this model has "
                f"{len(groups)} (hybrid models are not supported yet)"
            )
        transfer = self._kv_transfer_config
        settings = ConnectorSettings.from_extra_config(transfer.kv_connector_extra_config)
        parallel = vllm_config.parallel_config
        model = str(vllm_config.model_config.model)
        block_size = int(vllm_config.cache_config.block_size)
        world_size = int(getattr(parallel, "world_size", 1) or 1)
        self._scheduler: SchedulerSide | None = None
        self._worker: WorkerSide | None = None
        self._reported: dict[str, int] = {}
        if role == KVConnectorRole.SCHEDULER:
            self._scheduler = SchedulerSide(
                settings, model_name=model, world_size=world_size, block_size=block_size
            )
        else:
            self._worker = WorkerSide(
                settings,
                model_name=model,
                world_size=world_size,
                worker_id=int(getattr(parallel, "rank", 0) or 0),
                block_size=block_size,
            )

    @property
    def requires_kv_delivery(self) -> bool:
        """False: a dropped store is a later miss, not lost work."""
        return False

    # -- worker side ----------------------------------------------------------------------

    def _worker_side(self) -> WorkerSide:
        if self._worker is None:
            raise RuntimeError("a worker-side method was called on the scheduler connector")
        return self._worker

    def _plan(self) -> StepPlan:
        if not self.has_connector_metadata():
            return StepPlan()
        meta = self._get_connector_metadata()
        if not isinstance(meta, LMCacheStepMetadata):
            raise TypeError(f"unexpected connector metadata {type(meta).__name__}")
        return meta.plan

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        """Register the KV cache views with the server; the heartbeat starts now."""
        self._worker_side().register_kv_caches(kv_caches)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        """Run this step's loads (synchronously, engine_driven)."""
        self._worker_side().start_load_kv(self._plan())

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Nothing to wait for: loads completed in :meth:`start_load_kv`."""

    def save_kv_layer(
        self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any
    ) -> None:
        """Nothing per layer: whole chunks are stored in :meth:`wait_for_save`."""

    def wait_for_save(self) -> None:
        """Store this step's completed prompt chunks."""
        self._worker_side().wait_for_save(self._plan())

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        """Requests done storing (among the finished ones) and done loading."""
        return self._worker_side().get_finished(finished_req_ids)

    def get_block_ids_with_load_errors(self) -> set[int]:
        """Blocks whose load failed (vLLM recomputes or fails them per its policy)."""
        return self._worker_side().get_block_ids_with_load_errors()

    def get_kv_connector_stats(self) -> KVConnectorStats | None:
        """Transfer counters since the last call (vLLM asks both roles; None on the scheduler)."""
        if self._worker is None:
            return None
        stats = self._worker.stats
        delta = {}
        for name in _COUNTERS:
            value = int(getattr(stats, name))
            delta[name] = value - self._reported.get(name, 0)
            self._reported[name] = value
        result = LMCacheConnectorStats(data=delta)
        return None if result.is_empty() else result

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> KVConnectorStats:
        """Our stats class, for vLLM's logger."""
        return LMCacheConnectorStats(data=dict(data) if data else dict.fromkeys(_COUNTERS, 0))

    def shutdown(self) -> None:
        """Stop heartbeats, unregister, close the client."""
        if self._worker is not None:
            self._worker.shutdown()
        if self._scheduler is not None:
            self._scheduler.shutdown()

    # -- scheduler side -------------------------------------------------------------------

    def _scheduler_side(self) -> SchedulerSide:
        if self._scheduler is None:
            raise RuntimeError("a scheduler-side method was called on a worker connector")
        return self._scheduler

    def on_new_request(self, request: Any) -> None:
        """Start the lookup early with ``lmcache.mp.eager_prefetch``."""
        self._scheduler_side().on_new_request(request)

    def get_num_new_matched_tokens(
        self, request: Any, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        """Cached tokens beyond ``num_computed_tokens`` (None while the lookup runs)."""
        return self._scheduler_side().get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        """Plan the load into the allocated blocks (none when ``num_external_tokens == 0``)."""
        self._scheduler_side().update_state_after_alloc(
            request, blocks.get_block_ids(), num_external_tokens
        )

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        """This step's loads and stores."""
        return LMCacheStepMetadata(self._scheduler_side().build_connector_meta(scheduler_output))

    def request_finished(
        self, request: Any, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        """End the request's session; hold its blocks while a store is reported pending."""
        return self._scheduler_side().request_finished(request)

    def request_finished_all_groups(
        self, request: Any, block_ids: tuple[list[int], ...]
    ) -> tuple[bool, dict[str, Any] | None]:
        """:meth:`request_finished` for the hybrid allocator (one group supported)."""
        return self._scheduler_side().request_finished(request)

    def reset_cache(self) -> bool | None:
        """Clear the server's L1 (objects not in use)."""
        return self._scheduler_side().reset_cache()
