"""Harness figures for the vLLM connector: lookup-to-hit latency, dead-server detection, recovery.

Usage: ``python benchmarks/bench_vllm_harness.py``. A real server, the scheduler side here
and the worker side in its own process (``lmcache_vllm.harness``). Lookup latency is the time
from a request's first ``get_num_new_matched_tokens`` to the call that returns its hit,
with 1 and with 8 requests arriving together; the noop round trip of the same client is
measured in the same run as the floor.
"""

from __future__ import annotations

import os
import random
import statistics
import time

from lmcache_vllm.harness.replay import FakeRequest, WorkerProcess
from lmcache_vllm.harness.server import ServerProcess
from lmcache_vllm.harness.setup import SERVER_ARGS, make_pair


def tokens(n: int, seed: int) -> list[int]:
    """A deterministic random prompt."""
    rng = random.Random(seed)
    return [rng.randrange(1, 30000) for _ in range(n)]


def main() -> None:
    """Run and print the figures."""
    server = ServerProcess(*SERVER_ARGS)
    server.start()
    worker = WorkerProcess()
    try:
        # A 1 s heartbeat: the dead-server detection time below is measured against it.
        sched = make_pair(server, worker, geometry={"blocks": 160}, heartbeat_interval=1.0)
        side = sched.connector
        floor = []
        for _ in range(50):
            started = time.perf_counter()
            side.client.call_sync("noop", timeout=5)
            floor.append(time.perf_counter() - started)
        prompts = [tokens(600, seed) for seed in range(8)]
        for number, prompt in enumerate(prompts):
            sched.add(FakeRequest(f"warm{number}", prompt))
        sched.run_until_idle()
        for concurrency in (1, 8):
            latencies = []
            for round_ in range(5):
                requests = [
                    FakeRequest(f"c{concurrency}-{round_}-{i}", prompts[i])
                    for i in range(concurrency)
                ]
                started = time.perf_counter()
                pending = {r.request_id: r for r in requests}
                while pending:
                    for rid, request in list(pending.items()):
                        if side.get_num_new_matched_tokens(request, 0)[0] is not None:
                            latencies.append(time.perf_counter() - started)
                            del pending[rid]
                    time.sleep(0.0002)
                for request in requests:
                    side.update_state_after_alloc(request, ([],), 0)
                    side.request_finished(request)
            print(
                f"lookup-to-hit, {concurrency} concurrent: median "
                f"{statistics.median(latencies) * 1e3:.2f} ms, max {max(latencies) * 1e3:.2f} ms "
                f"(noop round trip median {statistics.median(floor) * 1e3:.2f} ms)"
            )
        pool = str(server.metrics()["l1"].get("shm_name") or "")
        server.kill()
        if pool:  # a SIGKILLed server leaves its pool segment behind
            os.unlink(os.path.join("/dev/shm", pool.lstrip("/")))
        killed = time.monotonic()
        while side.health.healthy:
            time.sleep(0.005)
        detected = time.monotonic() - killed
        started = time.monotonic()
        server.start()
        healthy = time.monotonic() - started
        while not side.health.healthy:
            time.sleep(0.005)
        recovered = time.monotonic() - started
        print(
            f"dead server detected after {detected:.2f} s (heartbeat_interval 1.0 s); "
            f"recovered {recovered:.2f} s after restart began (server healthy after "
            f"{healthy:.2f} s, i.e. {recovered - healthy:.2f} s after it answered)"
        )
        side.shutdown()
    finally:
        worker.close()
        server.stop()


if __name__ == "__main__":
    main()
