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
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
)

from lmcache_vllm.metadata import StepPlan
from lmcache_vllm.prom import PromRecorder
from lmcache_vllm.scheduler import SchedulerSide
from lmcache_vllm.settings import ConnectorSettings
from lmcache_vllm.stats import StatsPayload, normalise_payload
from lmcache_vllm.worker import WorkerSide

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class LMCacheStepMetadata(KVConnectorMetadata):
    """The scheduler's :class:`~lmcache_vllm.metadata.StepPlan`, as vLLM carries it."""

    def __init__(self, plan: StepPlan) -> None:
        self.plan = plan


class LMCacheConnectorStats(StatsPayload, KVConnectorStats):
    """One interval's payload (:mod:`lmcache_vllm.stats`), as vLLM aggregates and logs it.

    Both roles report: the workers their loads, stores and health (summed over workers by
    vLLM's ``KVOutputAggregator``), the scheduler its lookups and health (added in
    ``Scheduler.update_from_output``).
    """


class LMCachePromMetrics(KVConnectorPromMetrics):
    """The payload's Prometheus series (:mod:`lmcache_vllm.prom`)."""

    def __init__(
        self,
        vllm_config: Any,
        metric_types: dict[type[Any], type[Any]],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self._recorder = PromRecorder(
            self._counter_cls, self._histogram_cls, labelnames, per_engine_labelvalues
        )

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        """Record one step's payload."""
        self._recorder.observe(transfer_stats_data, engine_idx)


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
        """This role's stats since the last call; None when nothing happened.

        vLLM calls it every step in each worker and in the scheduler (``kv_role`` aside).
        """
        side = self._worker if self._worker is not None else self._scheduler
        if side is None:
            return None
        stats = LMCacheConnectorStats(data=side.take_interval_stats())
        return None if stats.is_empty() else stats

    @classmethod
    def build_kv_connector_stats(
        cls, data: dict[str, Any] | None = None
    ) -> KVConnectorStats | None:
        """Our stats class around a payload (a private copy: vLLM reuses its dict)."""
        return LMCacheConnectorStats(data=normalise_payload(data))

    @classmethod
    def build_prom_metrics(
        cls,
        vllm_config: Any,
        metric_types: dict[type[Any], type[Any]],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> KVConnectorPromMetrics | None:
        """The connector's Prometheus series (``vllm:lmcache_mp_*``)."""
        return LMCachePromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)

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
