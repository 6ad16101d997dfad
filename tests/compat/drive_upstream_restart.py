"""Upstream 0.5.6's adapters survive our server being SIGKILLed and restarted (compat venv).

Usage: python drive_upstream_restart.py tcp://127.0.0.1:PORT

Phase 1: register, store, look up and retrieve (bytes checked), print ``READY`` and
wait for a line on stdin: the test kills the server, starts it again on the same
port, waits until the adapter re-registered, and writes ``GO``. Phase 2: the same
adapters, never rebuilt, store, look up and retrieve new tokens. Prints one JSON
line; exits non-zero on any mismatch.
"""

import json
import sys

from drive_upstream import make_adapters, register, round_trip, wait_for


def main(url: str) -> None:
    scheduler, worker = make_adapters(url, heartbeat_interval=1.0)
    chunk = worker.req_client.get_chunk_size().result(timeout=10)
    kv = register(worker)
    report = {"before": list(round_trip(scheduler, worker, kv, chunk, "before", seed=7))}
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        raise SystemExit("no GO")
    wait_for(lambda: worker.is_healthy and scheduler.is_healthy, "the adapters' recovery", 60)
    report["after"] = list(round_trip(scheduler, worker, kv, chunk, "after", seed=8))
    worker.shutdown()
    scheduler.shutdown()
    print(json.dumps(report))
    if report["before"] != [3 * chunk, True] or report["after"] != [3 * chunk, True]:
        raise SystemExit(f"mismatch: {report}")


if __name__ == "__main__":
    main(sys.argv[1])
