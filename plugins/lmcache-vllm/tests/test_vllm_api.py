"""Our connector against vLLM 0.33's real classes (``nox -s vllm``; skipped without vLLM).

Checks the class against the real ``KVConnectorBase_V1`` and ``SupportsHMA`` (abstract
methods, signatures), vLLM's own loading by ``kv_connector_module_path``, and drives both
roles of a real connector instance with vLLM's real ``Request``, ``SchedulerOutput``,
``NewRequestData`` and ``KVCacheBlocks`` against a real server.
"""

from __future__ import annotations

import inspect
import random
import time
from types import SimpleNamespace
from typing import Any

import pytest

base = pytest.importorskip(
    "vllm.distributed.kv_transfer.kv_connector.v1.base",
    reason="vLLM is not installed here: run `nox -s vllm`",
)

from lmcache_vllm.connector import LMCacheMPConnector, LMCacheStepMetadata  # noqa: E402
from lmcache_vllm.harness.server import ServerProcess  # noqa: E402
from lmcache_vllm.harness.setup import BLOCK, SERVER_ARGS, extra_config  # noqa: E402
from lmcache_vllm.harness.worker_process import HarnessWorker, allocate_kv  # noqa: E402
from lmcache_vllm.scheduler import STATS_KEY  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.config import KVTransferConfig  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory  # noqa: E402
from vllm.v1.core.kv_cache_manager import KVCacheBlocks  # noqa: E402
from vllm.v1.core.kv_cache_utils import KVCacheBlock  # noqa: E402
from vllm.v1.core.sched.output import NewRequestData, SchedulerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402


def test_is_a_complete_kv_connector_with_hma() -> None:
    assert issubclass(LMCacheMPConnector, base.KVConnectorBase_V1)
    assert issubclass(LMCacheMPConnector, base.SupportsHMA)
    assert base.supports_hma(LMCacheMPConnector)
    assert not getattr(LMCacheMPConnector, "__abstractmethods__", frozenset())


def _overridden() -> list[tuple[str, Any]]:
    names = set(vars(base.KVConnectorBase_V1)) | set(vars(base.SupportsHMA))
    return sorted(
        (name, member)
        for name, member in vars(LMCacheMPConnector).items()
        if name in names and inspect.isfunction(member) and not name.startswith("__")
    )


@pytest.mark.parametrize("name", [name for name, _ in _overridden()])
def test_signatures_match_the_base_class(name: str) -> None:
    ours = inspect.signature(getattr(LMCacheMPConnector, name))
    parent = base.KVConnectorBase_V1 if hasattr(base.KVConnectorBase_V1, name) else base.SupportsHMA
    theirs = inspect.signature(getattr(parent, name))

    def shape(sig: inspect.Signature) -> list[tuple[str, Any]]:
        return [(p.name, p.kind) for p in sig.parameters.values()]

    assert shape(ours) == shape(theirs), f"{name}: {ours} != {theirs}"


def test_init_signature_takes_kv_cache_config() -> None:
    assert "kv_cache_config" in inspect.signature(LMCacheMPConnector.__init__).parameters


def test_vllm_loads_it_by_module_path() -> None:
    config = KVTransferConfig(
        kv_connector="LMCacheMPConnector",
        kv_role="kv_both",
        kv_connector_module_path="lmcache_vllm.connector",
    )
    assert KVConnectorFactory.get_connector_class(config) is LMCacheMPConnector


@pytest.fixture(scope="module")
def server() -> Any:
    process = ServerProcess(*SERVER_ARGS)
    process.start()
    yield process
    process.stop()


def _vllm_config(server: ServerProcess) -> Any:
    transfer = KVTransferConfig(
        kv_connector="LMCacheMPConnector",
        kv_role="kv_both",
        kv_connector_module_path="lmcache_vllm.connector",
        kv_connector_extra_config=extra_config(server),
    )
    return SimpleNamespace(
        kv_transfer_config=transfer,
        model_config=SimpleNamespace(model=f"vllm-api-{random.getrandbits(32)}"),
        cache_config=SimpleNamespace(block_size=BLOCK),
        parallel_config=SimpleNamespace(world_size=1, rank=0),
    )


def _blocks(ids: list[int]) -> Any:
    return KVCacheBlocks(blocks=([KVCacheBlock(block_id=i) for i in ids],))


def _matched(connector: Any, request: Any) -> tuple[int | None, bool]:
    deadline = time.monotonic() + 60  # a hang guard: lookups take milliseconds
    while time.monotonic() < deadline:
        answer = connector.get_num_new_matched_tokens(request, 0)
        if answer[0] is not None:
            return tuple(answer)  # type: ignore[return-value]
        time.sleep(0.002)
    raise AssertionError("the lookup never finished")


def test_both_roles_with_vllms_real_data_structures(server: ServerProcess) -> None:
    config = _vllm_config(server)
    sched = LMCacheMPConnector(config, base.KVConnectorRole.SCHEDULER, None)
    worker = LMCacheMPConnector(config, base.KVConnectorRole.WORKER, None)
    kv = HarnessWorker()
    kv.block = BLOCK
    kv.kv = allocate_kv(2, 16, 2, BLOCK, 16, "LBHNC")
    try:
        worker.register_kv_caches(kv.kv)
        prompt = [random.randrange(1, 30000) for _ in range(600)]

        def step(output: Any, forward: tuple[Any, int, int] | None = None) -> Any:
            meta = sched.build_connector_meta(output)
            assert isinstance(meta, LMCacheStepMetadata)
            worker.bind_connector_metadata(meta)
            worker.start_load_kv(None)
            if forward is not None:
                kv.forward(prompt, *forward)
            worker.wait_for_save()
            done = worker.get_finished(output.finished_req_ids)
            worker.clear_connector_metadata()
            return meta, done

        first = Request("r0", prompt, SamplingParams(max_tokens=2), None)
        assert _matched(sched, first) == (0, False)
        ids = [1, 2, 3, 4, 5]
        sched.update_state_after_alloc(first, _blocks(ids), 0)
        out = SchedulerOutput.make_empty()
        out.scheduled_new_reqs = [NewRequestData.from_request(first, (ids,))]
        out.num_scheduled_tokens = {"r0": 600}
        meta, _ = step(out, (ids, 0, 600))
        assert [(op.start, op.end) for op in meta.plan.stores] == [(0, 512)]
        delay, params = sched.request_finished(first, ids)
        assert delay is True and params is not None
        done_out = SchedulerOutput.make_empty()
        done_out.finished_req_ids = {"r0"}
        _, (sending, _) = step(done_out)
        assert sending == {"r0"}

        second = Request("r1", prompt, SamplingParams(max_tokens=2), None)
        assert _matched(sched, second) == (512, True)
        target = [6, 7, 8, 9]
        sched.update_state_after_alloc(second, _blocks(target), 512)
        meta, (_, recving) = step(SchedulerOutput.make_empty())
        assert [op.request_id for op in meta.plan.loads] == ["r1"]
        assert recving == {"r1"}
        assert worker.get_block_ids_with_load_errors() == set()
        assert kv.mismatches(prompt, target, 0, 512) == 0, "loaded KV differs"
        stats = worker.get_kv_connector_stats()
        assert stats is not None
        reduced = stats.reduce()
        assert reduced["loads_ok"] == 1 and reduced["loaded_tokens"] == 512
        assert reduced["stores_ok"] == 1 and reduced["stored_tokens"] == 512
        assert worker.get_kv_connector_stats() is None, "an interval reported twice"
        own = sched.get_kv_connector_stats()  # vLLM asks the scheduler connector too
        assert own is not None
        assert own.reduce()["lookups"] == 2 and own.reduce()["hit_tokens"] == 512
        _, params = sched.request_finished_all_groups(second, (target,))
        assert params is not None and params[STATS_KEY]["hit_tokens"] == 512
    finally:
        worker.shutdown()
        sched.shutdown()


def test_stats_class_implements_vllms_stats_interface() -> None:
    from lmcache_vllm.connector import LMCacheConnectorStats, LMCachePromMetrics
    from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
        KVConnectorPromMetrics,
        KVConnectorStats,
    )

    assert issubclass(LMCacheConnectorStats, KVConnectorStats)
    assert issubclass(LMCachePromMetrics, KVConnectorPromMetrics)
    for name in ("reset", "aggregate", "reduce", "is_empty"):
        assert getattr(LMCacheConnectorStats, name) is not getattr(KVConnectorStats, name), name
    assert LMCachePromMetrics.observe is not KVConnectorPromMetrics.observe
    built = LMCacheMPConnector.build_kv_connector_stats(None)
    assert isinstance(built, LMCacheConnectorStats) and built.is_empty()


def test_stats_flow_through_vllms_aggregator_logger_and_prometheus() -> None:
    """Two workers' payloads, the scheduler's on top, then vLLM's log line and metrics."""
    from lmcache_vllm.connector import LMCacheConnectorStats
    from lmcache_vllm.stats import LOOKUP_SECONDS, empty_payload
    from prometheus_client import REGISTRY
    from vllm.distributed.kv_transfer.kv_connector.utils import KVOutputAggregator
    from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
        KVConnectorLogging,
        KVConnectorProm,
    )
    from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput

    def stats(**values: Any) -> LMCacheConnectorStats:
        data = empty_payload()
        data.update(values)
        return LMCacheConnectorStats(data=data)

    def output(worker_stats: LMCacheConnectorStats) -> Any:
        return ModelRunnerOutput(
            req_ids=[],
            req_id_to_index={},
            kv_connector_output=KVConnectorOutput(kv_connector_stats=worker_stats),
        )

    merged = KVOutputAggregator(2).aggregate(
        [output(stats(loads_ok=1, loaded_tokens=512)), output(stats(loads_ok=1, loaded_tokens=512))]
    )
    assert merged is not None and merged.kv_connector_output is not None
    step = merged.kv_connector_output.kv_connector_stats
    assert step is not None
    # Scheduler.update_from_output adds the scheduler connector's stats.
    step = step.aggregate(
        stats(lookups=2, lookup_tokens=1024, hit_tokens=512, **{LOOKUP_SECONDS: [0.004, 0.006]})
    )
    payload = step.to_dict()  # what SchedulerStats carries to the logger process

    transfer = KVTransferConfig(
        kv_connector="LMCacheMPConnector",
        kv_role="kv_both",
        kv_connector_module_path="lmcache_vllm.connector",
    )
    logging_ = KVConnectorLogging(transfer)
    labels = {0: ["tiny", "0"]}
    prom = KVConnectorProm(
        SimpleNamespace(kv_transfer_config=transfer), ["model_name", "engine"], labels
    )
    for _ in range(2):  # two steps in one logging interval
        logging_.observe(payload)
        prom.observe(payload, 0)
    lines: list[str] = []
    logging_.log(log_fn=lambda fmt, *args: lines.append(fmt % args))
    assert len(lines) == 1 and lines[0].startswith("KV Transfer metrics: lookups=4,")
    for part in ("loads_ok=4", "loaded_tokens=2048", "hit_rate=0.5", "lookup_avg_ms=5.0"):
        assert part in lines[0], lines[0]
    assert payload["loads_ok"] == 2, "vLLM's payload was modified while logging"

    def value(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"model_name": "tiny", "engine": "0"})

    assert value("vllm:lmcache_mp_loaded_tokens_total") == 2048
    assert value("vllm:lmcache_mp_lookups_total") == 4
    assert value("vllm:lmcache_mp_lookup_duration_seconds_count") == 4


def test_hybrid_models_are_refused_with_a_message(server: ServerProcess) -> None:
    two_groups = SimpleNamespace(kv_cache_groups=[object(), object()])
    for role in (base.KVConnectorRole.SCHEDULER, base.KVConnectorRole.WORKER):
        with pytest.raises(NotImplementedError, match=r"supports one KV cache group; .* has 2"):
            LMCacheMPConnector(_vllm_config(server), role, two_groups)
