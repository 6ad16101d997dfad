"""vLLM's connector call sequence replayed against a real server and a worker process.

The scheduler side runs here; the worker side runs in its own process with a KV cache
laid out as vLLM 0.32+ lays it out; the server is a real ``lmcache server``. A load is
checked token by token against the KV a forward pass would have written.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from lmcache_vllm.harness.replay import WAITING_FOR_REMOTE_KVS, FakeRequest, MiniScheduler
from lmcache_vllm.harness.server import ServerProcess
from lmcache_vllm.harness.setup import BLOCK, CHUNK, SERVER_ARGS
from lmcache_vllm.scheduler import STATS_KEY
from lmcache_vllm.settings import ConnectorSettings

PairFactory = Callable[..., MiniScheduler]


def tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, 30000) for _ in range(n)]


def stats_of(request: FakeRequest) -> dict[str, int]:
    assert request.finished_params is not None
    return dict(request.finished_params[STATS_KEY])


def loads(sched: MiniScheduler) -> dict[str, int]:
    """Mismatching tokens per loaded request, over every step so far."""
    found: dict[str, int] = {}
    for step in sched.steps:
        found.update(step.worker["load_mismatches"])
    return found


def stores(sched: MiniScheduler, rid: str) -> list[tuple[int, int]]:
    return [(s, e) for step in sched.steps for (r, s, e) in step.plan_stores if r == rid]


@pytest.mark.parametrize("layout", ["LBHNC", "LBNHC"])
def test_prefix_reuse_loads_identical_kv(
    server: ServerProcess, make_pair: PairFactory, layout: str
) -> None:
    sched = make_pair(server, layout=layout)
    prompt = tokens(600, 1)
    sched.add(FakeRequest("r0", prompt))
    sched.run_until_idle()
    # Only whole prompt chunks are stored: 600 tokens -> [0, 512).
    assert stores(sched, "r0") == [(0, 512)]
    assert stats_of(sched.finished["r0"])["hit_tokens"] == 0

    second = prompt[:560] + tokens(40, 2)
    sched.add(FakeRequest("r1", second))
    sched.run_until_idle()
    assert loads(sched) == {"r1": 0}, "the loaded KV differs from the computed KV"
    assert sched.finished["r1"].loaded_tokens == 512
    assert stats_of(sched.finished["r1"]) == {
        "lookup_tokens": 512,
        "hit_tokens": 512,
        "loaded_tokens": 512,
        "stored_tokens": 512,  # planned; the server skipped the chunks it holds
        "prompt_tokens": 600,
    }
    # The store is planned over the loaded chunks too; the server skips what it holds.
    assert stores(sched, "r1") == [(0, 512)]
    assert not sched.held and len(sched.free_blocks) == 47, "blocks leaked"


def test_partial_hit_then_longer_hit(server: ServerProcess, make_pair: PairFactory) -> None:
    sched = make_pair(server)
    base = tokens(300, 3)
    sched.add(FakeRequest("a", base))
    sched.run_until_idle()
    longer = base + tokens(600, 4)
    sched.add(FakeRequest("b", longer))
    sched.run_until_idle()
    assert stats_of(sched.finished["b"])["hit_tokens"] == CHUNK
    assert stores(sched, "b") == [(0, 768)]
    sched.add(FakeRequest("c", longer))
    sched.run_until_idle()
    assert stats_of(sched.finished["c"])["hit_tokens"] == 768
    assert loads(sched) == {"b": 0, "c": 0}


def test_decode_chunks_are_not_stored_unless_asked(
    server: ServerProcess, make_pair: PairFactory
) -> None:
    sched = make_pair(server)
    sched.add(FakeRequest("p", tokens(300, 5), max_tokens=250))
    sched.run_until_idle()
    assert stores(sched, "p") == [(0, CHUNK)]

    sched = make_pair(server, save_decode_cache=True)
    sched.add(FakeRequest("q", tokens(300, 6), max_tokens=250))
    sched.run_until_idle()
    assert stores(sched, "q")[0] == (0, CHUNK)
    assert stores(sched, "q")[-1][1] == 512


def test_repeated_lookups_never_count_a_chunk_twice(
    server: ServerProcess, make_pair: PairFactory
) -> None:
    sched = make_pair(server)
    prompt = tokens(700, 7)
    sched.add(FakeRequest("w", prompt))
    sched.run_until_idle()
    side = sched.connector
    request = FakeRequest("again", prompt)
    answers = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        answer = side.get_num_new_matched_tokens(request, 0)
        answers.append(answer)
        if answer[0] is not None and len(answers) > 3:
            break
        time.sleep(0.005)
    settled = [a for a in answers if a[0] is not None]
    assert settled and all(a == (512, True) for a in settled), answers
    # With tokens computed locally (vLLM's prefix cache), only the rest is offered.
    assert side.get_num_new_matched_tokens(request, BLOCK) == (512 - BLOCK, True)
    assert side.get_num_new_matched_tokens(request, 512) == (0, False)
    side.update_state_after_alloc(request, ([1, 2, 3, 4, 5, 6],), 0)  # no load: locks freed
    assert side.request_finished(request)[0] is False


def test_preempted_request_is_looked_up_and_loaded_again(
    server: ServerProcess, make_pair: PairFactory
) -> None:
    sched = make_pair(server)
    prompt = tokens(520, 8)
    sched.add(FakeRequest("first", prompt))
    sched.run_until_idle()
    sched.add(FakeRequest("victim", prompt, max_tokens=6))
    for _ in range(50):
        sched.step()
        if any(r.request_id == "victim" and r.output_token_ids for r in sched.running):
            break
    sched.preempt("victim")
    sched.run_until_idle()
    victim_loads = [s.worker["load_mismatches"].get("victim") for s in sched.steps]
    assert [m for m in victim_loads if m is not None] == [0, 0], "loaded twice, identically"
    assert stats_of(sched.finished["victim"])["hit_tokens"] == 512
    assert not sched.held and len(sched.free_blocks) == 47


def test_abort_while_waiting_for_the_load_frees_everything(
    server: ServerProcess, make_pair: PairFactory
) -> None:
    sched = make_pair(server)
    prompt = tokens(600, 9)
    sched.add(FakeRequest("src", prompt))
    sched.run_until_idle()
    sched.add(FakeRequest("gone", prompt))
    for _ in range(100):
        sched.step()
        if any(r.status == WAITING_FOR_REMOTE_KVS for r in sched.waiting):
            break
    else:
        pytest.fail("the request never waited for its load")
    sched.abort("gone")
    sched.run_until_idle()
    assert "gone" in sched.steps[-1].worker["recving"] or any(
        "gone" in s.worker["recving"] for s in sched.steps
    )
    assert not sched.held and len(sched.free_blocks) == 47
    # An abort before any lookup: nothing to end, nothing held.
    sched.add(FakeRequest("never", prompt))
    sched.abort("never")
    assert sched.finished["never"].finished_params is None  # never looked up: no stats
    deadline = time.monotonic() + 5
    while server.metrics()["l1"]["locked_objects"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metrics()["l1"]["locked_objects"] == 0, "a lookup lock leaked"


def test_failed_load_is_reported_and_recomputed(
    server: ServerProcess, make_pair: PairFactory
) -> None:
    sched = make_pair(server)
    prompt = tokens(600, 10)
    sched.add(FakeRequest("x", prompt))
    sched.run_until_idle()
    side = sched.connector
    planned = side.update_state_after_alloc

    def plan_then_lose_the_chunks(request: Any, blocks: Any, external: int) -> None:
        planned(request, blocks, external)
        if external:  # the cached chunks vanish between the lookup and the load
            side.client.call_sync("clear", True, timeout=5)

    side.update_state_after_alloc = plan_then_lose_the_chunks  # type: ignore[method-assign]
    sched.add(FakeRequest("y", prompt))
    sched.run_until_idle()
    side.update_state_after_alloc = planned  # type: ignore[method-assign]
    failed = [s.worker for s in sched.steps if s.worker["failed"]]
    assert failed and failed[0]["failed"] == ["y"]
    assert failed[0]["errors"], "the failed blocks were not reported"
    assert "y" in failed[0]["recving"], "a failed load must still be reported finished"
    # Recomputed from the first failed block, then stored again.
    assert stores(sched, "y") == [(0, 512)]
    sched.add(FakeRequest("z", prompt))
    sched.run_until_idle()
    assert stats_of(sched.finished["z"])["hit_tokens"] == 512
    assert loads(sched)["z"] == 0
    assert not sched.held and len(sched.free_blocks) == 47


def test_skip_lookup_and_skip_store(server: ServerProcess, make_pair: PairFactory) -> None:
    sched = make_pair(server)
    prompt = tokens(600, 11)
    sched.add(FakeRequest("nostore", prompt, kv_transfer_params={"lmcache.skip_store": True}))
    sched.run_until_idle()
    assert stores(sched, "nostore") == []
    sched.add(FakeRequest("store", prompt))
    sched.run_until_idle()
    sched.add(FakeRequest("nolook", prompt, kv_transfer_params={"lmcache.skip_lookup": True}))
    sched.run_until_idle()
    assert stats_of(sched.finished["nolook"])["hit_tokens"] == 0
    assert "nolook" not in loads(sched)


def test_unreachable_server_fails_start_up_quickly() -> None:
    from lmcache_vllm.harness.server import free_port
    from lmcache_vllm.scheduler import SchedulerSide

    settings = ConnectorSettings.from_extra_config(
        {
            "lmcache.mp.host": "127.0.0.1",
            "lmcache.mp.port": free_port(),
            "lmcache.mp.mq_timeout": 0.5,
        }
    )
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="did not answer within"):
        SchedulerSide(settings, model_name="m", world_size=1, block_size=BLOCK)
    assert time.monotonic() - started < 5


def test_slow_server_lookup_is_bounded(server: ServerProcess, make_pair: PairFactory) -> None:
    """A stalled server (SIGSTOP): the request is scheduled as a miss after lookup_timeout."""
    stalled = ServerProcess(*SERVER_ARGS)
    stalled.start()
    try:
        sched = make_pair(stalled, lookup_timeout=0.5, heartbeat_interval=5)
        prompt = tokens(600, 12)
        sched.add(FakeRequest("warm", prompt))
        sched.run_until_idle()
        assert stalled.process is not None
        os.kill(stalled.process.pid, signal.SIGSTOP)
        try:
            request = FakeRequest("stuck", prompt)
            started = time.monotonic()
            while sched.connector.get_num_new_matched_tokens(request, 0)[0] is None:
                time.sleep(0.01)
                assert time.monotonic() - started < 3, "the lookup wait is not bounded"
            waited = time.monotonic() - started
            assert sched.connector.get_num_new_matched_tokens(request, 0) == (0, False)
            assert 0.4 < waited < 2.0
            assert not sched.connector.health.healthy
        finally:
            os.kill(stalled.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while not sched.connector.health.healthy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sched.connector.health.healthy, "did not recover after the server resumed"
    finally:
        stalled.stop()


def test_server_killed_and_restarted(make_pair: PairFactory) -> None:
    """Degraded mode while the server is gone; re-registration and hits once it is back."""
    target = ServerProcess(*SERVER_ARGS)
    target.start()
    pool = str(target.metrics()["l1"].get("shm_name") or "")
    try:
        sched = make_pair(target)
        prompt = tokens(600, 13)
        sched.add(FakeRequest("before", prompt))
        sched.run_until_idle()
        target.kill()
        killed = time.monotonic()
        while sched.connector.health.healthy and time.monotonic() - killed < 5:
            time.sleep(0.01)
        assert not sched.connector.health.healthy, "the dead server was not noticed"

        sched.add(FakeRequest("during", prompt))
        started = time.monotonic()
        sched.run_until_idle()
        assert time.monotonic() - started < 3, "requests waited on a dead server"
        assert stats_of(sched.finished["during"])["hit_tokens"] == 0
        assert "during" not in loads(sched)

        _remove_pool(pool)
        target.start()
        pool = str(target.metrics()["l1"].get("shm_name") or "")
        restarted = time.monotonic()
        while time.monotonic() - restarted < 10:
            health = sched.worker.request("health")
            if sched.connector.health.healthy and health["health"]["reregistrations"] >= 1:
                break
            time.sleep(0.05)
        assert health["health"]["reregistrations"] >= 1, health
        sched.add(FakeRequest("after", prompt))
        sched.run_until_idle()
        assert stores(sched, "after") == [(0, 512)], "stores did not resume"
        sched.add(FakeRequest("hit", prompt))
        sched.run_until_idle()
        assert stats_of(sched.finished["hit"])["hit_tokens"] == 512
        assert loads(sched).get("hit") == 0
    finally:
        target.stop()
        _remove_pool(pool)


def _remove_pool(name: str) -> None:
    """A SIGKILLed server leaves its L1 pool segment behind."""
    if name:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join("/dev/shm", name.lstrip("/")))
