"""The shared L2 back ends side by side: one Redis, a Redis Cluster, S3, Mooncake.

Run: ``.venv/bin/python benchmarks/bench_shared_l2.py [--quick]``

Each back end is started here on loopback (``redis-server``; a three-shard Redis
Cluster of ``redis-server``; moto's S3 server; ``mooncake_master`` with one
standalone store node) and driven through its adapter exactly as a server builds it:
the plugin's registered factory on the ``--l2-adapter`` JSON, with the L1 arena in
the adapter context. The same payloads, in an arena standing in for L1, go through
every adapter in the ``framed`` format, loads into scratch buffers as the L2 tier
does. Per back end: store and load GB/s of one batch (median of the repeats after a
warm-up, fresh keys every run) and the latency of one 64-key lookup (median of 30).
This is the figure set of ``docs/shared-l2.md``; each adapter's ratio to its own
raw client is ``bench_l2.py``'s job. Everything started here is stopped at exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_l2 import CREDENTIALS, REGION, moto_server, redis_server
from benchmarks.common import machine_info
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.context import L2AdapterContext

MIB = 1 << 20
REPEAT = 5
LOOKUP_REPEAT = 30


def build(adapter_json: dict[str, Any], region: tuple[int, int]) -> L2AdapterV1:
    """The adapter a server would build from ``adapter_json`` (its plugin's factory)."""
    from lmcache_core.plugin import L2AdapterSpec, PluginKind
    from lmcache_core.plugin.registry import PluginRegistry

    spec = PluginRegistry().resolve(PluginKind.L2_ADAPTER, adapter_json["type"])
    assert isinstance(spec, L2AdapterSpec)
    config = spec.config_model.model_validate(adapter_json)
    adapter: L2AdapterV1 = spec.factory(config, L2AdapterContext(l1_region=region))
    adapter.buffers_are_scratch = True
    adapter.start()
    return adapter


@contextlib.contextmanager
def backends(workdir: Path, only: set[str]) -> Iterator[dict[str, dict[str, Any]]]:
    """Each back end started, as ``name -> --l2-adapter JSON``; all stopped at exit."""
    from lmcache_l2_resp.testing import REDIS_SERVER, RedisClusterServers

    found: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        if REDIS_SERVER is not None and "redis" in only:
            server = stack.enter_context(redis_server(workdir / "redis"))
            found["redis"] = {"type": "resp", "host": server.host, "port": server.port}
        if REDIS_SERVER is not None and "redis_cluster" in only:
            cluster = RedisClusterServers(workdir / "cluster")
            cluster.start()
            stack.callback(cluster.stop)
            found["redis_cluster"] = {"type": "resp", "cluster": True, "seed_nodes": cluster.seeds}
        if "s3" in only:
            import boto3

            url = stack.enter_context(moto_server())
            bucket = f"shared-{secrets.token_hex(6)}"
            boto3.client("s3", endpoint_url=url, region_name=REGION, **CREDENTIALS).create_bucket(
                Bucket=bucket
            )
            found["s3"] = {
                "type": "s3",
                "s3_endpoint": f"{bucket}.{url.removeprefix('http://')}",
                "s3_region": REGION,
                "disable_tls": True,
                **CREDENTIALS,
            }
        if "mooncake" in only:
            from lmcache_l2_mooncake_store.testing import MooncakeCluster, mooncake_installed

            if mooncake_installed():
                mooncake = stack.enter_context(MooncakeCluster(workdir / "mooncake"))
                mooncake.add_store_node(1 << 30)
                found["mooncake"] = mooncake.adapter_config()
            else:
                print("mooncake: skipped, not installed (nox -s mooncake)", file=sys.stderr)
        yield found


def measure(
    adapter: L2AdapterV1, arena: np.ndarray[Any, Any], count: int, size: int
) -> dict[str, float]:
    """Store/load GB/s of one batch and the 64-key lookup latency."""
    payloads = [arena[i * size : (i + 1) * size].data for i in range(count)]
    buffers = [arena[(count + i) * size : (count + i + 1) * size].data for i in range(count)]
    stores: list[float] = []
    loads: list[float] = []
    for index in range(1 + REPEAT):
        keys = [ObjectKey(secrets.token_bytes(16), "bench/model", 0) for _ in range(count)]
        store_s = timed(partial(run, adapter.submit_store, keys, payloads, "store"))
        check(adapter.submit_lookup_and_lock(keys).result(), "lookup")
        adapter.unlock(keys)
        load_s = timed(partial(run, adapter.submit_load, keys, buffers, "load"))
        if index == 0 and any(b != p for b, p in zip(buffers, payloads, strict=True)):
            raise RuntimeError(f"{adapter.name}: loaded bytes differ")
        adapter.delete(keys, force=True)
        if index:
            stores.append(store_s)
            loads.append(load_s)
    keys = [ObjectKey(secrets.token_bytes(16), "bench/model", 0) for _ in range(64)]
    check(adapter.submit_store(keys, [payloads[0][:4096]] * 64).result(), "store")
    lookups = []
    for _ in range(LOOKUP_REPEAT):
        lookups.append(
            timed(lambda: check(adapter.submit_lookup_and_lock(keys).result(), "lookup"))
        )
        adapter.unlock(keys)
    adapter.delete(keys, force=True)
    nbytes = count * size
    return {
        "store_gbps": nbytes / statistics.median(stores) / 1e9,
        "load_gbps": nbytes / statistics.median(loads) / 1e9,
        "lookup_64_ms": statistics.median(lookups) * 1e3,
    }


def run(submit: Callable[..., Any], keys: list[ObjectKey], views: list[Any], what: str) -> None:
    check(submit(keys, views).result(), what)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def check(results: list[bool], what: str) -> None:
    if not all(results):
        raise RuntimeError(f"{what} failed for {results.count(False)} of {len(results)} keys")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller batch")
    parser.add_argument("--only", default="redis,redis_cluster,s3,mooncake")
    args = parser.parse_args()
    count, size = (8, 2 * MIB) if args.quick else (16, 4 * MIB)
    arena = np.empty(2 * count * size, dtype=np.uint8)
    arena[: count * size] = np.frombuffer(os.urandom(count * size), dtype=np.uint8)
    region = (int(arena.ctypes.data), arena.nbytes)
    report: dict[str, Any] = {"machine": machine_info(), "objects": count, "object_mib": size / MIB}
    report["loadavg_before"] = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-shl2-")))
        found = stack.enter_context(backends(workdir, set(args.only.split(","))))
        for name, adapter_json in found.items():
            adapter = build(adapter_json, region)
            try:
                report[name] = measure(adapter, arena, count, size)
            finally:
                adapter.close()
            print(f"{name}: {report[name]}", file=sys.stderr)
    report["loadavg_after"] = os.getloadavg()[0]
    print(f"| back end | store {count} x {size // MIB} MiB | load | lookup of 64 keys |")
    print("| --- | --- | --- | --- |")
    for name in found:
        r = report[name]
        print(
            f"| {name} | {r['store_gbps']:.2f} GB/s | {r['load_gbps']:.2f} GB/s | "
            f"{r['lookup_64_ms']:.2f} ms |"
        )
    print(
        f"| 1-min load average, before / after | {report['loadavg_before']:.2f} / "
        f"{report['loadavg_after']:.2f} | {report['machine']['cores']} cores | |"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
