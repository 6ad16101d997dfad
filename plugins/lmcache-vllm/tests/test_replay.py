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
from lmcache_vllm.harness.setup import BLOCK, CHUNK, GEOMETRY, SERVER_ARGS, extra_config
from lmcache_vllm.scheduler import STATS_KEY
from lmcache_vllm.settings import ConnectorSettings

PairFactory = Callable[..., MiniScheduler]

COUNTED = (
    "lookups",
    "lookup_tokens",
    "hit_tokens",
    "planned_load_tokens",
    "planned_store_tokens",
    "loads_ok",
    "loads_failed",
    "loaded_tokens",
    "loaded_bytes",
    "stores_ok",
    "stores_dropped",
    "stored_tokens",
    "stored_bytes",
    "server_down_events",
    "worker_down_events",
)
"""The logged counters the replay tests pin exactly."""

# The tests wait on state, never on a clock: HANG_GUARD only stops a test that would
# otherwise wait forever (a lost wake-up, a connector blocked on a stopped server). It is
# far above anything the loaded 2-core machine needs, so it is no timing assertion.
HANG_GUARD = 60.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` past :data:`HANG_GUARD`."""
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still not the case after {HANG_GUARD:g} s")
        time.sleep(0.01)


def step_until(sched: MiniScheduler, condition: Callable[[], bool], what: str) -> None:
    """Step the scheduler until ``condition`` holds after a step.

    Bounded by time, not by a step count: a step is one worker round trip while a lookup
    is several server round trips, so under load a lookup can outlast any fixed number of
    steps.
    """
    deadline = time.monotonic() + HANG_GUARD
    while True:
        sched.step()
        if condition():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still not the case after {HANG_GUARD:g} s")
        time.sleep(0.001)  # vLLM's engine loop polls too


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
    # vLLM's "KV Transfer metrics" for the interval: both roles' payloads, as it adds them.
    logged = sched.take_logged_stats()
    token_bytes = 2 * GEOMETRY["layers"] * GEOMETRY["heads"] * GEOMETRY["head"] * 4  # fp32
    assert {k: v for k, v in logged.items() if k in COUNTED} == {
        "lookups": 2,
        "lookup_tokens": 1024,
        "hit_tokens": 512,
        "planned_load_tokens": 512,
        "planned_store_tokens": 1024,
        "loads_ok": 1,
        "loads_failed": 0,
        "loaded_tokens": 512,
        "loaded_bytes": 512 * token_bytes,
        "stores_ok": 2,
        "stores_dropped": 0,
        "stored_tokens": 512,  # r1's chunks were held already: nothing copied
        "stored_bytes": 512 * token_bytes,
        "server_down_events": 0,
        "worker_down_events": 0,
    }
    assert logged["hit_rate"] == 0.5
    assert 0 < logged["lookup_p50_ms"] <= logged["lookup_max_ms"]
    assert sched.take_logged_stats()["lookups"] == 0, "the interval was not reset"


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


def test_whole_prompt_hit_computes_only_the_last_token(
    server: ServerProcess, make_pair: PairFactory
) -> None:
    """A chunk-aligned prompt held entirely: vLLM computes its last token, not a chunk."""
    sched = make_pair(server)
    prompt = tokens(2 * CHUNK, 14)
    sched.add(FakeRequest("whole", prompt))
    sched.run_until_idle()
    assert stores(sched, "whole") == [(0, 2 * CHUNK)]
    before = len(sched.steps)
    sched.add(FakeRequest("again", prompt, max_tokens=4))
    sched.run_until_idle()
    stats = stats_of(sched.finished["again"])
    assert stats["hit_tokens"] == 2 * CHUNK
    assert stats["loaded_tokens"] == 2 * CHUNK - 1, "the last token is vLLM's to compute"
    # Every token of the last chunk loaded and checked, the last one included.
    assert loads(sched)["again"] == 0
    # One prompt token computed, then three decode steps: four tokens in all.
    assert sum(step.scheduled for step in sched.steps[before:]) == 4
    assert not sched.held and len(sched.free_blocks) == 47


def test_repeated_lookups_never_count_a_chunk_twice(
    server: ServerProcess, make_pair: PairFactory
) -> None:
    sched = make_pair(server)
    prompt = tokens(700, 7)
    sched.add(FakeRequest("w", prompt))
    sched.run_until_idle()
    side = sched.connector
    request = FakeRequest("again", prompt)
    answers: list[tuple[int | None, bool]] = []

    def asked_again_after_the_hit() -> bool:
        answers.append(side.get_num_new_matched_tokens(request, 0))
        return sum(a[0] is not None for a in answers) >= 4

    wait_until(asked_again_after_the_hit, "the lookup settled and was asked 3 more times")
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
    step_until(
        sched,
        lambda: any(r.request_id == "victim" and r.output_token_ids for r in sched.running),
        "the victim decodes",
    )
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
    # The load is planned in the step that sees the hit and runs in the next one: the
    # abort below lands between the two, whatever the machine's load.
    step_until(
        sched,
        lambda: any(r.status == WAITING_FOR_REMOTE_KVS for r in sched.waiting),
        "the request waits for its load",
    )
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
    wait_until(lambda: server.metrics()["l1"]["locked_objects"] == 0, "no lookup lock leaks")


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
    logged = sched.take_logged_stats()
    # x stored, y's load failed (4 blocks recomputed) and y stored again, z loaded (its
    # store committed nothing new: the server held both chunks).
    assert logged["loads_failed"] == 1 and logged["load_failed_blocks"] == 512 // BLOCK
    assert logged["loads_ok"] == 1 and logged["loaded_tokens"] == 512
    assert logged["stores_ok"] == 3 and logged["stored_tokens"] == 1024
    assert logged["lookups"] == 3 and logged["hit_tokens"] == 1024
    assert logged["stores_dropped"] == 0 and logged["worker_down_events"] == 0


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


@pytest.mark.skipif(
    not os.environ.get("LMCACHE_VLLM_STALL"),
    reason="opt-in (nox -s vllm_stall, LMCACHE_VLLM_STALL=1): under a load of 6 or more a "
    "worker ping sent during the stall has gone unanswered (the server counted an "
    "undeliverable reply), cause not found yet; a flaky test stays out of the default run",
)
def test_a_short_stall_is_slowness_not_an_outage(
    server: ServerProcess, make_pair: PairFactory
) -> None:
    """A server that answers nothing for 1.5 s (what a loaded machine does): no degraded mode.

    Both sides have a call in flight during the stall, forced rather than left to the
    heartbeat's timing: the scheduler's lookup and a worker's ping (the harness's ``beat``).
    Each must be answered after SIGCONT, and the hit must still load. The harness's
    timeouts are the connector's defaults (10 s pings, 30 s transfers); with the 1 s
    heartbeat the tests once used, the ping in flight timed out and the hit below became a
    recompute.
    """
    sched = make_pair(server)
    prompt = tokens(600, 15)
    sched.add(FakeRequest("stored", prompt))
    sched.run_until_idle()
    assert server.process is not None
    before = outages(sched)
    pings = sched.worker.request("health")["health"]
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        sched.worker.request("beat")  # the worker's ping leaves while the server is stopped
        sched.add(FakeRequest("stalled", prompt))
        resume_at = time.monotonic() + 1.5
        while time.monotonic() < resume_at:
            sched.step()  # the lookup is pending: nothing is scheduled, nothing waits
            time.sleep(0.01)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    sched.run_until_idle()
    wait_until(
        lambda: sched.worker.request("health")["beats_pending"] == 0,
        "the worker's ping sent during the stall was answered",
    )
    health = sched.worker.request("health")["health"]
    # What the server saw, should the ping go unanswered (undeliverable replies?).
    requests = server.metrics()["requests"]
    assert health["pings"] > pings["pings"]
    assert health["failed_pings"] == pings["failed_pings"], (
        f"the ping sent during the stall got no reply; server requests: {requests}"
    )
    assert outages(sched) == before, f"a 1.5 s stall was taken for an outage: {requests}"
    assert stats_of(sched.finished["stalled"])["hit_tokens"] == 512
    assert loads(sched)["stalled"] == 0
    logged = sched.take_logged_stats()
    assert logged["lookups_degraded"] == 0 and logged["lookup_timeouts"] == 0
    assert logged["loads_ok"] == 1 and logged["stores_dropped"] == 0
    assert logged["lookup_max_ms"] >= 1000, "the lookup did not span the stall"


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
    # The message names the timeout: the start-up waited mq_timeout (0.5 s), not the
    # 300 s default (an unbounded wait would hang the test instead).
    with pytest.raises(
        ConnectionError, match=r"did not answer within lmcache\.mp\.mq_timeout=0\.5 s"
    ):
        SchedulerSide(settings, model_name="m", world_size=1, block_size=BLOCK)


def test_slow_server_lookup_is_bounded(server: ServerProcess, make_pair: PairFactory) -> None:
    """A stalled server (SIGSTOP): the request is scheduled as a miss after lookup_timeout."""
    from lmcache_vllm.scheduler import SchedulerSide

    stalled = ServerProcess(*SERVER_ARGS)
    stalled.start()
    probe: SchedulerSide | None = None
    sched: MiniScheduler | None = None
    try:
        # The prefix is stored with the harness's long timeouts: a fresh server on a loaded
        # machine may well take longer than 0.5 s over its first lookup, which would make
        # the warm-up itself a timeout (and the connector degraded before the stall).
        sched = make_pair(stalled, heartbeat_interval=5)
        prompt = tokens(600, 12)
        sched.add(FakeRequest("warm", prompt))
        sched.run_until_idle()
        assert stats_of(sched.finished["warm"])["hit_tokens"] == 0
        assert stores(sched, "warm") == [(0, 512)]
        # The short lookup_timeout is the probe's, a scheduler side of its own, made while
        # the server answers (its start-up fetches the chunk size).
        probe = SchedulerSide(
            ConnectorSettings.from_extra_config(
                extra_config(stalled, lookup_timeout=0.5, heartbeat_interval=5)
            ),
            model_name=sched.connector.model_name,
            world_size=1,
            block_size=BLOCK,
        )
        side = probe
        check = FakeRequest("check", prompt)
        wait_until(
            lambda: side.get_num_new_matched_tokens(check, 0)[0] is not None,
            "the probe's lookup answered while the server runs",
        )
        # A hit: what the stalled lookup below misses is there, the miss is the stall's.
        assert side.get_num_new_matched_tokens(check, 0) == (512, True)
        side.update_state_after_alloc(check, ([],), 0)  # no load: its locks are freed
        side.request_finished(check)
        assert side.health.healthy, "the probe is degraded before the stall"
        assert stalled.process is not None
        os.kill(stalled.process.pid, signal.SIGSTOP)
        try:
            request = FakeRequest("stuck", prompt)

            # Either clock may fire first: the connector's lookup_timeout, or the client
            # call's timeout (the same value), which ends the lookup with an error.
            def ended() -> int:
                return side.stats.lookup_timeouts + side.stats.lookup_errors

            timeouts = ended()
            started = time.monotonic()
            # The server stays stopped throughout: an answer at all means the wait is
            # bounded by the connector, not by the server.
            wait_until(
                lambda: side.get_num_new_matched_tokens(request, 0)[0] is not None,
                "the lookup answered while the server is stopped",
            )
            waited = time.monotonic() - started
            assert side.get_num_new_matched_tokens(request, 0) == (0, False)
            assert ended() == timeouts + 1, "the lookup was not ended by its timeout"
            assert waited >= 0.4, "answered before lookup_timeout (0.5 s): not a timeout"
            assert not side.health.healthy
        finally:
            os.kill(stalled.process.pid, signal.SIGCONT)
        wait_until(lambda: side.health.healthy, "healthy after the server resumed")
    finally:
        if probe is not None:
            probe.shutdown()
        _release_worker(sched)
        stalled.stop()


def outages(sched: MiniScheduler) -> int:
    """Switches to degraded mode so far, the scheduler's and the worker's."""
    worker = sched.worker.request("health")["health"]
    return int(sched.connector.health.stats.went_down) + int(worker["went_down"])


def both_healthy(sched: MiniScheduler) -> bool:
    return sched.connector.health.healthy and bool(sched.worker.request("health")["healthy"])


def until_it_happens(
    sched: MiniScheduler, prompt: list[int], name: str, happened: Callable[[str], bool]
) -> str:
    """Fresh requests for ``prompt`` until ``happened(request_id)``; the request's id.

    With a 1 s heartbeat a loaded machine can fake a short outage (a ping answered late);
    the connector then rightly skips that request's lookup or store. A retry is allowed only
    after such an outage was seen: a request that fails with none fails the test.
    """
    deadline = time.monotonic() + HANG_GUARD
    for number in range(1000):
        wait_until(lambda: both_healthy(sched), "the scheduler and the worker are healthy")
        before = outages(sched)
        rid = f"{name}{number}"
        sched.add(FakeRequest(rid, prompt))
        sched.run_until_idle()
        if happened(rid):
            return rid
        assert outages(sched) > before, f"{rid}: not the case, and no outage explains it"
        if time.monotonic() > deadline:
            break
    pytest.fail(f"{name}: still not the case after {HANG_GUARD:g} s")


def test_server_killed_and_restarted(make_pair: PairFactory) -> None:
    """Degraded mode while the server is gone; re-registration and hits once it is back."""
    target = ServerProcess(*SERVER_ARGS)
    target.start()
    pool = str(target.metrics()["l1"].get("shm_name") or "")
    sched: MiniScheduler | None = None
    try:
        # A short heartbeat: the outage must be noticed within a second or two.
        sched = make_pair(target, heartbeat_interval=1.0)
        prompt = tokens(600, 13)
        sched.add(FakeRequest("before", prompt))
        sched.run_until_idle()
        target.kill()
        wait_until(lambda: not sched.connector.health.healthy, "the dead server noticed")

        side = sched.connector
        degraded, timeouts = side.stats.lookups_degraded, side.stats.lookup_timeouts
        sched.add(FakeRequest("during", prompt))
        sched.run_until_idle()
        # Answered as a miss at once in degraded mode, not after a lookup timed out.
        assert side.stats.lookups_degraded == degraded + 1, "requests waited on a dead server"
        assert side.stats.lookup_timeouts == timeouts
        assert stats_of(sched.finished["during"])["hit_tokens"] == 0
        assert "during" not in loads(sched)

        _remove_pool(pool)
        target.start()
        pool = str(target.metrics()["l1"].get("shm_name") or "")
        wait_until(
            lambda: (
                sched.connector.health.healthy
                and sched.worker.request("health")["health"]["reregistrations"] >= 1
            ),
            "the worker re-registered and the scheduler is healthy again",
        )
        until_it_happens(
            sched, prompt, "after", lambda rid: stores(sched, rid) == [(0, 512)]
        )  # stores resumed
        hit = until_it_happens(
            sched, prompt, "hit", lambda rid: stats_of(sched.finished[rid])["hit_tokens"] == 512
        )
        assert loads(sched).get(hit) == 0, "the KV loaded after the restart differs"
        logged = sched.take_logged_stats()
        # Both roles saw the outage; "during" was answered in degraded mode, not stored.
        assert logged["server_down_events"] >= 1 and logged["worker_down_events"] >= 1
        assert logged["degraded_seconds"] > 0 and logged["worker_degraded_seconds"] > 0
        assert logged["reregistrations"] >= 1 and logged["lookups_degraded"] >= 1
        # The logged counts are those of the requests and of the steps' plans.
        finished = sched.finished.values()
        assert logged["lookups"] == len(sched.finished)
        assert logged["hit_tokens"] == sum(stats_of(r)["hit_tokens"] for r in finished)
        planned_stores = sum(len(step.plan_stores) for step in sched.steps)
        assert logged["stores_ok"] + logged["stores_dropped"] == planned_stores
        planned_loads = sum(len(step.plan_loads) for step in sched.steps)
        assert logged["loads_ok"] + logged["loads_failed"] == planned_loads
        assert logged["loads_ok"] >= 1 and logged["stored_tokens"] >= 1024
    finally:
        _release_worker(sched)
        target.stop()
        _remove_pool(pool)


def _release_worker(sched: MiniScheduler | None) -> None:
    """Shut the worker side down while its server still answers its unregistration.

    After the server is stopped the unregistration would wait out its 5 s bound in the
    fixture's teardown.
    """
    if sched is not None:
        with contextlib.suppress(RuntimeError):
            sched.worker.request("shutdown_side")


def _remove_pool(name: str) -> None:
    """A SIGKILLed server leaves its L1 pool segment behind."""
    if name:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join("/dev/shm", name.lstrip("/")))
