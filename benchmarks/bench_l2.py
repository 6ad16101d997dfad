"""Benchmarks of the L2 adapters (fs, resp, s3) next to their raw backends, in one run.

Run: ``.venv/bin/python benchmarks/bench_l2.py [--quick] [--only fs,resp,s3]`` (``--only
mooncake_store``: :mod:`benchmarks.bench_l2_mooncake`, where Mooncake is installed)

For each adapter, one batch of objects is stored (``submit_store``) and loaded
(``submit_load``, after an untimed ``submit_lookup_and_lock``) in the framed format,
the way the L2 tier uses the adapter (``buffers_are_scratch``: loads go straight into
the destination buffers); GB/s counts payload bytes. Each figure is the median of 3
runs after one warm-up run, with fresh keys every run and the objects deleted between
runs. Adapter and raw runs alternate, so drift (page cache write-back, a busy
neighbour) hits both alike.

The ceiling is measured in the same run, on the same payload bytes:

* ``fs`` (a temporary directory under /tmp): plain sequential ``os.open`` / write /
  close then :func:`os.replace`, no fsync (what the adapter does), and ``readinto``
  of each file into the same preallocated buffers the adapter loads into.
* ``resp`` (a real ``redis-server`` started here on a free port, nothing on disk):
  redis-py ``SET`` / ``GET`` on one connection, one key after the other; the GET's
  bytes are not copied anywhere (the adapter receives them into the buffer).
* ``s3`` (moto's server, ``python -m moto.server``, started here): boto3
  ``put_object`` / ``get_object`` + ``read()``, one after the other and with one thread
  per object (the adapter spreads a batch over its I/O threads); the faster of the
  two is the ceiling. The raw client keeps botocore's default CRC32 of each body;
  the adapter skips it for framed objects (the frame's checksum covers them).

Everything started here (redis-server, the moto server, temporary directories) is
stopped or removed at exit. Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import blake3
import boto3
import xxhash
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmcache_l2_fs.adapter import FsL2Adapter
from lmcache_l2_fs_native.adapter import FsNativeL2Adapter
from lmcache_l2_fs_native.client import FsNativeClient
from lmcache_l2_resp.adapter import RespL2Adapter
from lmcache_l2_resp.testing import REDIS_SERVER, RedisServer
from lmcache_l2_s3.adapter import S3L2Adapter

from benchmarks.common import machine_info
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2 import object_format
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.object_format import Checksum

MIB = 1 << 20
MODEL = "bench/model"
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
TARGET = 0.8
REPEAT = 3
WARMUP = 1


@dataclass(frozen=True)
class Plan:
    """How many objects of which size each adapter moves in one batch."""

    fs: tuple[int, int]
    resp: tuple[int, int]
    s3: tuple[int, int]


FULL = Plan(fs=(16, 32 * MIB), resp=(8, 32 * MIB), s3=(8, 32 * MIB))
QUICK = Plan(fs=(4, 8 * MIB), resp=(4, 8 * MIB), s3=(2, 8 * MIB))
MOONCAKE_FULL = (16, 4 * MIB)  # (objects, bytes): KV-chunk-sized objects, 64 MiB a batch
MOONCAKE_QUICK = (8, 2 * MIB)


# -- raw backends ---------------------------------------------------------------------------


class Raw:
    """The plain client of a backend: write, read and remove named objects."""

    def write(self, names: Sequence[str], payloads: Sequence[bytes]) -> None:
        raise NotImplementedError

    def read(self, names: Sequence[str], buffers: Sequence[bytearray]) -> None:
        raise NotImplementedError

    def remove(self, names: Sequence[str]) -> None:
        raise NotImplementedError


class RawFs(Raw):
    """Files in a directory, written like the adapter writes them (temp file, rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write(self, names: Sequence[str], payloads: Sequence[bytes]) -> None:
        for name, payload in zip(names, payloads, strict=True):
            final = self.directory / name
            tmp = self.directory / f"{name}.part"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(payload)
                done = 0
                while done < len(view):
                    done += os.write(fd, view[done:])
            finally:
                os.close(fd)
            os.replace(tmp, final)

    def read(self, names: Sequence[str], buffers: Sequence[bytearray]) -> None:
        for name, buffer in zip(names, buffers, strict=True):
            with open(self.directory / name, "rb", buffering=0) as handle:
                view = memoryview(buffer)
                done = 0
                while done < len(view):
                    got = handle.readinto(view[done:])
                    if not got:
                        raise OSError(f"{name}: short read")
                    done += got

    def remove(self, names: Sequence[str]) -> None:
        for name in names:
            (self.directory / name).unlink()


class RawRedis(Raw):
    """redis-py SET / GET on one connection, one key after the other."""

    def __init__(self, server: RedisServer) -> None:
        self.client = server.client(socket_timeout=60)

    def write(self, names: Sequence[str], payloads: Sequence[bytes]) -> None:
        for name, payload in zip(names, payloads, strict=True):
            self.client.set(name, payload)

    def read(self, names: Sequence[str], buffers: Sequence[bytearray]) -> None:
        for name, buffer in zip(names, buffers, strict=True):
            value = self.client.get(name)
            if not isinstance(value, bytes) or len(value) != len(buffer):
                raise RuntimeError(f"{name}: GET returned the wrong value")

    def remove(self, names: Sequence[str]) -> None:
        self.client.delete(*names)


class RawS3(Raw):
    """boto3 put_object / get_object, sequential or one thread per object."""

    def __init__(self, client: Any, bucket: str, *, parallel: bool) -> None:
        self.client = client
        self.bucket = bucket
        self.parallel = parallel
        self.pool = ThreadPoolExecutor(64, thread_name_prefix="raw-s3")

    def _each(self, work: Callable[[str, Any], None], names: Sequence[str], values: Any) -> None:
        if self.parallel:
            futures = [self.pool.submit(work, n, v) for n, v in zip(names, values, strict=True)]
            for future in futures:
                future.result()
        else:
            for name, value in zip(names, values, strict=True):
                work(name, value)

    def _put(self, name: str, payload: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=name, Body=payload)

    def _get(self, name: str, buffer: bytearray) -> None:
        body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
        try:
            data = body.read()
        finally:
            body.close()
        if len(data) != len(buffer):
            raise RuntimeError(f"{name}: GET returned {len(data)} bytes")

    def write(self, names: Sequence[str], payloads: Sequence[bytes]) -> None:
        self._each(self._put, names, payloads)

    def read(self, names: Sequence[str], buffers: Sequence[bytearray]) -> None:
        self._each(self._get, names, buffers)

    def remove(self, names: Sequence[str]) -> None:
        for name in names:
            self.client.delete_object(Bucket=self.bucket, Key=name)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


# -- servers --------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def moto_server(timeout_s: float = 30.0) -> Iterator[str]:
    """``python -m moto.server`` on 127.0.0.1 and a free port; yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start in time") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    """A real ``redis-server`` (nothing on disk), stopped at exit."""
    server = RedisServer(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def closing_adapter(adapter: L2AdapterV1) -> Iterator[L2AdapterV1]:
    """Start ``adapter`` as the L2 tier uses it (loads into scratch buffers); close it at exit."""
    adapter.buffers_are_scratch = True
    try:
        adapter.start()
        yield adapter
    finally:
        adapter.close()


# -- measurement ----------------------------------------------------------------------------


def fresh_keys(count: int) -> list[ObjectKey]:
    return [ObjectKey(secrets.token_bytes(16), MODEL, 0) for _ in range(count)]


def adapter_round(
    adapter: L2AdapterV1,
    payloads: Sequence[bytes],
    buffers: Sequence[bytearray],
    *,
    check: bool,
) -> tuple[float, float]:
    """Store then load one batch under fresh keys; (store s, load s); deletes the keys."""
    keys = fresh_keys(len(payloads))
    start = time.perf_counter()
    stored = adapter.submit_store(keys, payloads).result()
    store_s = time.perf_counter() - start
    if not all(stored):
        raise RuntimeError(f"{adapter.name}: store failed: {stored}")
    found = adapter.submit_lookup_and_lock(keys).result()
    if not all(found):
        raise RuntimeError(f"{adapter.name}: lookup missed: {found}")
    views = [memoryview(buffer) for buffer in buffers]
    start = time.perf_counter()
    loaded = adapter.submit_load(keys, views).result()
    load_s = time.perf_counter() - start
    if not all(loaded):
        raise RuntimeError(f"{adapter.name}: load failed: {loaded}")
    if check and any(b != p for b, p in zip(buffers, payloads, strict=True)):
        raise RuntimeError(f"{adapter.name}: loaded bytes differ from the stored ones")
    adapter.unlock(keys)
    if adapter.delete(keys) != len(keys):
        raise RuntimeError(f"{adapter.name}: delete left objects behind")
    return store_s, load_s


def raw_round(
    raw: Raw, payloads: Sequence[bytes], buffers: Sequence[bytearray]
) -> tuple[float, float]:
    """Write then read one batch under fresh names; (write s, read s); removes them."""
    names = [f"raw-{secrets.token_hex(16)}" for _ in payloads]
    start = time.perf_counter()
    raw.write(names, payloads)
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    raw.read(names, buffers)
    read_s = time.perf_counter() - start
    raw.remove(names)
    return write_s, read_s


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    name: str,
    adapter: L2AdapterV1,
    raws: dict[str, Raw],
    count: int,
    size: int,
) -> dict[str, float]:
    """Median GB/s of the adapter and of each raw client, alternating runs."""
    payloads = [os.urandom(size) for _ in range(count)]
    buffers = [bytearray(size) for _ in range(count)]
    nbytes = count * size
    times: dict[str, list[float]] = {}
    for index in range(WARMUP + REPEAT):
        rounds = {"adapter": adapter_round(adapter, payloads, buffers, check=index == 0)}
        for label, raw in raws.items():
            rounds[label] = raw_round(raw, payloads, buffers)
        if index < WARMUP:
            continue
        for label, (put_s, get_s) in rounds.items():
            times.setdefault(f"{label}_store", []).append(put_s)
            times.setdefault(f"{label}_load", []).append(get_s)
    results: dict[str, float] = {"objects": count, "object_mib": size / MIB}

    # Reference only: the framed format hashes each payload once per store and per load.
    def hash_all() -> None:
        for payload in payloads:
            blake3.blake3(payload).digest(length=8)

    def xxh3_all() -> None:
        for payload in payloads:
            xxhash.xxh3_64_intdigest(payload)

    hash_s = [_timed(hash_all) for _ in range(REPEAT)]
    results["blake3_gbps"] = nbytes / statistics.median(hash_s) / 1e9
    xxh3_s = [_timed(xxh3_all) for _ in range(REPEAT)]
    results["xxh3_gbps"] = nbytes / statistics.median(xxh3_s) / 1e9
    for label, samples in times.items():
        results[f"{label}_gbps"] = nbytes / statistics.median(samples) / 1e9
    for op in ("store", "load"):
        ceiling = max(results[f"{label}_{op}_gbps"] for label in raws)
        results[f"raw_{op}_gbps"] = ceiling
        results[f"{op}_ratio"] = results[f"adapter_{op}_gbps"] / ceiling
    print(
        f"{name}: store {results['adapter_store_gbps']:.2f} GB/s "
        f"(raw {results['raw_store_gbps']:.2f}), load {results['adapter_load_gbps']:.2f} GB/s "
        f"(raw {results['raw_load_gbps']:.2f})",
        file=sys.stderr,
    )
    return results


def bench_fs(stack: contextlib.ExitStack, count: int, size: int) -> dict[str, float]:
    base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-l2-fs-")))
    adapter = stack.enter_context(closing_adapter(FsL2Adapter(base, persist=False)))
    return measure("fs", adapter, {"raw": RawFs(base)}, count, size)


def bench_fs_native(stack: contextlib.ExitStack, count: int, size: int) -> dict[str, float]:
    base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-l2-fsn-")))
    adapter = FsNativeL2Adapter(FsNativeClient(base), persist=False)
    stack.enter_context(closing_adapter(adapter))
    return measure("fs_native", adapter, {"raw": RawFs(base)}, count, size)


def bench_resp(stack: contextlib.ExitStack, count: int, size: int) -> dict[str, float]:
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-l2-redis-")))
    server = stack.enter_context(redis_server(workdir))
    adapter = RespL2Adapter(server.host, server.port, socket_timeout_s=60.0, persist=False)
    stack.enter_context(closing_adapter(adapter))
    raw = RawRedis(server)
    stack.callback(raw.client.close)
    return measure("resp", adapter, {"raw": raw}, count, size)


def bench_s3(stack: contextlib.ExitStack, count: int, size: int) -> dict[str, float]:
    url = stack.enter_context(moto_server())
    client = boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        config=Config(
            s3={"addressing_style": "path"},
            max_pool_connections=64,
            read_timeout=120,
            retries={"max_attempts": 1},
        ),
        **CREDENTIALS,
    )
    stack.callback(client.close)
    bucket = f"bench-l2-{secrets.token_hex(8)}"
    client.create_bucket(Bucket=bucket)
    adapter = S3L2Adapter(
        f"s3://{bucket}.{url.removeprefix('http://')}",
        region=REGION,
        disable_tls=True,
        access_key_id=CREDENTIALS["aws_access_key_id"],
        secret_access_key=CREDENTIALS["aws_secret_access_key"],
        read_timeout_s=120.0,
        max_attempts=1,
        persist=False,
    )
    stack.enter_context(closing_adapter(adapter))
    sequential = RawS3(client, bucket, parallel=False)
    parallel = RawS3(client, bucket, parallel=True)
    stack.callback(sequential.close)
    stack.callback(parallel.close)
    raws: dict[str, Raw] = {"raw_sequential": sequential, "raw_parallel": parallel}
    return measure("s3", adapter, raws, count, size)


def _terminate(signum: int, frame: FrameType | None) -> None:
    del frame
    raise SystemExit(128 + signum)  # unwinds the ExitStack: servers stopped, dirs removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller objects")
    parser.add_argument(
        "--only",
        default="fs,resp,s3",
        help=(
            "comma-separated adapters to measure (default: fs,resp,s3; also fs_native, "
            "mooncake_store, nixl_store, nixl_store_dynamic)"
        ),
    )
    parser.add_argument(
        "--frame-checksum",
        choices=[c.value for c in Checksum],
        default=object_format.write_checksum.value,
        help="the checksum framed stores write (blake3: the format before XXH3; default xxh3)",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    object_format.write_checksum = Checksum(args.frame_checksum)
    plan = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _terminate)
    report: dict[str, Any] = {
        "machine": machine_info(),
        "repeat": REPEAT,
        "format": "framed",
        "frame_checksum": args.frame_checksum,
    }
    report["loadavg_before"] = os.getloadavg()[0]
    started = time.perf_counter()
    if "fs" in only:
        with contextlib.ExitStack() as stack:
            report["fs"] = bench_fs(stack, *plan.fs)
    if "fs_native" in only:
        with contextlib.ExitStack() as stack:
            report["fs_native"] = bench_fs_native(stack, *plan.fs)
    if "resp" in only and REDIS_SERVER is None:
        print("resp: skipped, redis-server is not installed", file=sys.stderr)
    elif "resp" in only:
        with contextlib.ExitStack() as stack:
            report["resp"] = bench_resp(stack, *plan.resp)
    if "s3" in only:
        with contextlib.ExitStack() as stack:
            report["s3"] = bench_s3(stack, *plan.s3)
    if "mooncake_store" in only:
        _run_mooncake(report, plan)
    _run_nixl(report, plan, only)
    report["wall_s"] = time.perf_counter() - started
    report["loadavg_after"] = os.getloadavg()[0]
    print_report(report)
    if "mooncake_store" in report:
        from benchmarks.bench_l2_mooncake import print_mooncake_report

        print_mooncake_report(report["mooncake_store"], TARGET)
    if "nixl_store" in report or "nixl_store_dynamic" in report:
        from benchmarks.bench_l2_nixl import print_nixl_report

        print_nixl_report(report, TARGET)
    print(json.dumps(report))


def _run_mooncake(report: dict[str, Any], plan: Plan) -> None:
    """The mooncake_store figures (benchmarks/bench_l2_mooncake.py), if Mooncake is installed."""
    from benchmarks.bench_l2_mooncake import available, bench_mooncake

    if not available():
        print(
            "mooncake_store: skipped, Mooncake is not installed (nox -s mooncake)", file=sys.stderr
        )
        return
    with contextlib.ExitStack() as stack:
        report["mooncake_store"] = bench_mooncake(
            stack, *MOONCAKE_QUICK if plan is QUICK else MOONCAKE_FULL
        )


def _run_nixl(report: dict[str, Any], plan: Plan, only: set[str]) -> None:
    """The nixl_store(_dynamic) figures (benchmarks/bench_l2_nixl.py), if NIXL is installed."""
    names = [name for name in ("nixl_store", "nixl_store_dynamic") if name in only]
    if not names:
        return
    from benchmarks.bench_l2_nixl import available, bench_nixl

    if not available():
        print("nixl: skipped, NIXL is not installed", file=sys.stderr)
        return
    for name in names:
        with contextlib.ExitStack() as stack:
            report[name] = bench_nixl(stack, name, *plan.fs)


def print_report(r: dict[str, Any]) -> None:
    """The figures as a Markdown table, each next to its raw ceiling and the ratio."""
    raw_names = {
        "fs": ("sequential write + rename", "sequential read"),
        "fs_native": ("sequential write + rename", "sequential read"),
        "resp": ("redis-py SET", "redis-py GET"),
        "s3": ("boto3 put_object", "boto3 get_object"),
    }
    print("| measure | value | ceiling or target |")
    print("| --- | --- | --- |")
    for name in ("fs", "fs_native", "resp", "s3"):
        if name not in r:
            continue
        result = r[name]
        batch = f"{int(result['objects'])} x {result['object_mib']:.0f} MiB"
        for op, raw_name in zip(("store", "load"), raw_names[name], strict=True):
            value = result[f"adapter_{op}_gbps"]
            ceiling = result[f"raw_{op}_gbps"]
            ratio = result[f"{op}_ratio"]
            print(
                f"| {name} {op} {batch} | {value:.2f} GB/s | {raw_name} {ceiling:.2f} GB/s, "
                f"ratio {ratio:.2f} (target >= {TARGET}) |"
            )
    for name in ("fs", "fs_native", "resp", "s3"):
        if name in r:
            print(
                f"| blake3 / XXH3 of the {name} payloads (reference) | "
                f"{r[name]['blake3_gbps']:.2f} / {r[name]['xxh3_gbps']:.2f} GB/s "
                f"| one pass per framed store and load; frames carry {r['frame_checksum']} |"
            )
            break
    print(
        f"| 1-min load average, before / after | {r['loadavg_before']:.2f} / "
        f"{r['loadavg_after']:.2f} | {r['machine']['cores']} cores; other work skews the figures |"
    )


if __name__ == "__main__":
    main()
