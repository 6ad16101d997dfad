"""The ``mooncake_store`` part of ``bench_l2.py``: the adapter next to the raw Mooncake client.

A Mooncake cluster is started here on loopback (``mooncake_master`` and one
standalone store node, stopped by PID at exit); the adapter and the raw client are
both pure clients of it (``global_segment_size`` 0), as a fleet's servers are, so
every byte crosses Mooncake's TCP transport to the store node.

Both move the same bytes between the same memory: one arena (standing in for the
L1 arena) registered once with each client, the payloads in its first half, the
load buffers in its second. The adapter stores ``framed`` objects (header +
payload, one XXH3 pass per store and per load) under upstream's key strings; the
adapter also runs in the ``raw`` format (bare payloads, as upstream stores them).
The raw client calls ``batch_put_from`` / ``batch_get_into`` on the bare payloads.
Runs alternate, in a rotating order, after one warm-up; each figure is the median of :data:`REPEAT`.

Lookup latency: one ``submit_lookup_and_lock`` of 64 stored keys (future to
result), next to the raw ``batch_is_exist`` of the same 64 names, median of 50.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

MIB = 1 << 20
LOOKUP_KEYS = 64
LOOKUP_REPEAT = 50
REPEAT = 7  # batches are small (64 MiB) and the TCP figures noisy: more repeats than bench_l2
FORMATS = ("framed", "raw")


def available() -> bool:
    """Whether the Mooncake library and its binaries are installed."""
    from lmcache_l2_mooncake_store.testing import mooncake_installed

    return mooncake_installed()


class RawMooncake:
    """Mooncake's own client on the same arena: bare payloads, one batch call each way."""

    def __init__(self, setup: dict[str, str], arena: np.ndarray[Any, Any]) -> None:
        from mooncake.store import MooncakeDistributedStore

        self.store = MooncakeDistributedStore()
        if self.store.setup(setup) != 0:
            raise RuntimeError("raw Mooncake client: setup failed")
        self.base = int(arena.ctypes.data)
        if self.store.register_buffer(self.base, arena.nbytes) != 0:
            raise RuntimeError("raw Mooncake client: register_buffer failed")

    def round(self, ptrs: Sequence[int], dsts: Sequence[int], size: int) -> tuple[float, float]:
        """Put then get one batch under fresh names; (put s, get s); removes them."""
        names = [f"raw-{secrets.token_hex(16)}" for _ in ptrs]
        sizes = [size] * len(ptrs)
        start = time.perf_counter()
        codes = self.store.batch_put_from(names, list(ptrs), sizes)
        put_s = time.perf_counter() - start
        if any(code != 0 for code in codes):
            raise RuntimeError(f"raw Mooncake put failed: {codes}")
        start = time.perf_counter()
        got = self.store.batch_get_into(names, list(dsts), sizes)
        get_s = time.perf_counter() - start
        if list(got) != sizes:
            raise RuntimeError(f"raw Mooncake get failed: {got}")
        self.store.batch_remove(names, True)
        return put_s, get_s

    def close(self) -> None:
        self.store.unregister_buffer(self.base)
        self.store.close()


def bench_mooncake(stack: contextlib.ExitStack, count: int, size: int) -> dict[str, float]:
    """Store/load GB/s of the adapter (framed and raw) and of the raw client; lookup latency."""
    from lmcache_l2_mooncake_store.adapter import MooncakeStoreAdapter
    from lmcache_l2_mooncake_store.config import MooncakeStoreAdapterConfig
    from lmcache_l2_mooncake_store.testing import MooncakeCluster

    from benchmarks.bench_l2 import WARMUP, closing_adapter

    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-l2-mc-")))
    cluster = stack.enter_context(MooncakeCluster(workdir))
    # Room for a batch of each client plus the lookup keys, with headroom for leases.
    cluster.add_store_node(max(512 * MIB, 8 * count * size))
    arena = np.empty(2 * count * size, dtype=np.uint8)
    arena[: count * size] = np.frombuffer(os.urandom(count * size), dtype=np.uint8)
    base = int(arena.ctypes.data)
    adapters = {}
    for object_format in FORMATS:
        config = MooncakeStoreAdapterConfig.model_validate(
            cluster.adapter_config(persist_enabled=False, format=object_format)
        )
        adapter = MooncakeStoreAdapter(config, l1_region=(base, arena.nbytes))
        adapters[object_format] = stack.enter_context(closing_adapter(adapter))
    raw = RawMooncake(config.mooncake_setup(), arena)
    stack.callback(raw.close)

    payloads = [arena[i * size : (i + 1) * size].data for i in range(count)]
    buffers = [arena[(count + i) * size : (count + i + 1) * size].data for i in range(count)]
    ptrs = [base + i * size for i in range(count)]
    dsts = [base + (count + i) * size for i in range(count)]
    times: dict[str, list[float]] = {}
    for index in range(WARMUP + REPEAT):
        # Whoever runs first after the previous round's removes is slower: rotate the order.
        runners: list[tuple[str, Callable[[], tuple[float, float]]]] = [
            (f"adapter_{name}", partial(adapter_round, a, payloads, buffers, check=index == 0))
            for name, a in adapters.items()
        ]
        runners.append(("raw", partial(raw.round, ptrs, dsts, size)))
        shift = index % len(runners)
        rounds = {label: run() for label, run in runners[shift:] + runners[:shift]}
        if index < WARMUP:
            continue
        for label, (put_s, get_s) in rounds.items():
            times.setdefault(f"{label}_store", []).append(put_s)
            times.setdefault(f"{label}_load", []).append(get_s)
    nbytes = count * size
    results: dict[str, float] = {"objects": count, "object_mib": size / MIB, "repeat": REPEAT}
    for label, samples in times.items():
        results[f"{label}_gbps"] = nbytes / statistics.median(samples) / 1e9
    for name in FORMATS:
        for op in ("store", "load"):
            ratio = results[f"adapter_{name}_{op}_gbps"] / results[f"raw_{op}_gbps"]
            results[f"{name}_{op}_ratio"] = ratio
    results.update(lookup_latency(adapters["framed"], raw, payloads))
    print(
        f"mooncake_store: framed store {results['adapter_framed_store_gbps']:.2f} GB/s, "
        f"load {results['adapter_framed_load_gbps']:.2f} GB/s; raw client store "
        f"{results['raw_store_gbps']:.2f}, load {results['raw_load_gbps']:.2f} GB/s; lookup of "
        f"{LOOKUP_KEYS} keys {results['lookup_64_ms']:.2f} ms "
        f"(raw {results['raw_lookup_64_ms']:.2f} ms)",
        file=sys.stderr,
    )
    return results


def adapter_round(
    adapter: Any, payloads: Sequence[memoryview], buffers: Sequence[memoryview], *, check: bool
) -> tuple[float, float]:
    """Store then load one batch under fresh keys; (store s, load s); deletes the keys.

    As ``bench_l2.adapter_round``, but the delete is forced: a ``raw`` adapter honours
    the 10 s read lease Mooncake put on the objects just loaded.
    """
    from lmcache_core.storage.keys import ObjectKey

    keys = [ObjectKey(secrets.token_bytes(16), "bench/model", 0) for _ in payloads]
    start = time.perf_counter()
    stored = adapter.submit_store(keys, payloads).result()
    store_s = time.perf_counter() - start
    found = adapter.submit_lookup_and_lock(keys).result()
    if not (all(stored) and all(found)):
        raise RuntimeError(f"mooncake_store: store or lookup failed: {stored} {found}")
    adapter.unlock(keys)
    start = time.perf_counter()
    loaded = adapter.submit_load(keys, buffers).result()
    load_s = time.perf_counter() - start
    if not all(loaded):
        raise RuntimeError(f"mooncake_store: load failed: {loaded}")
    if check and any(b != p for b, p in zip(buffers, payloads, strict=True)):
        raise RuntimeError("mooncake_store: loaded bytes differ from the stored ones")
    if adapter.delete(keys, force=True) != len(keys):
        raise RuntimeError("mooncake_store: delete left objects behind")
    return store_s, load_s


def lookup_latency(
    adapter: Any, raw: RawMooncake, payloads: Sequence[memoryview]
) -> dict[str, float]:
    """Median ms of a 64-key lookup through the adapter and through ``batch_is_exist``."""
    from lmcache_core.storage.keys import ObjectKey
    from lmcache_core.storage.l2.key_names import native_key_name

    keys = [ObjectKey(secrets.token_bytes(16), "bench/model", 0) for _ in range(LOOKUP_KEYS)]
    small = [payloads[0][:4096]] * LOOKUP_KEYS
    if not all(adapter.submit_store(keys, small).result()):
        raise RuntimeError("mooncake_store: the lookup keys were not stored")
    names = [native_key_name(key) for key in keys]
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(LOOKUP_REPEAT):
        start = time.perf_counter()
        found = adapter.submit_lookup_and_lock(keys).result()
        ours.append(time.perf_counter() - start)
        adapter.unlock(keys)
        start = time.perf_counter()
        codes = raw.store.batch_is_exist(names)
        theirs.append(time.perf_counter() - start)
        if not all(found) or list(codes) != [1] * LOOKUP_KEYS:
            raise RuntimeError("mooncake_store: a lookup key went missing")
    adapter.delete(keys, force=True)
    return {
        "lookup_64_ms": statistics.median(ours) * 1e3,
        "raw_lookup_64_ms": statistics.median(theirs) * 1e3,
    }


def print_mooncake_report(result: dict[str, float], target: float) -> None:
    """The mooncake_store rows of the Markdown table (same columns as bench_l2's)."""
    batch = f"{int(result['objects'])} x {result['object_mib']:.0f} MiB"
    for name in FORMATS:
        for op, raw_name in (("store", "batch_put_from"), ("load", "batch_get_into")):
            print(
                f"| mooncake_store ({name}) {op} {batch} | "
                f"{result[f'adapter_{name}_{op}_gbps']:.2f} GB/s | raw {raw_name} "
                f"{result[f'raw_{op}_gbps']:.2f} GB/s, ratio {result[f'{name}_{op}_ratio']:.2f} "
                f"(target >= {target}) |"
            )
    print(
        f"| mooncake_store lookup of {LOOKUP_KEYS} keys | {result['lookup_64_ms']:.2f} ms | "
        f"raw batch_is_exist {result['raw_lookup_64_ms']:.2f} ms |"
    )
