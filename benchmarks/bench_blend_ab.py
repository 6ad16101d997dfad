"""Interleaved A/B of ``cb_unified_lookup``: this checkout's blend engine against another's.

Run: ``.venv/bin/python benchmarks/bench_blend_ab.py --baseline-tree TREE [--rounds N]``
(or ``--baseline-src DIR``)

``TREE`` is another checkout (e.g. a worktree of ``main``: ``git worktree add
--detach /tmp/base main``): the baseline server runs its core and every plugin.
``DIR`` is the ``src`` folder of another ``lmcache-engine-blend`` alone (the rest is
this checkout's). Two real servers run at once, the baseline started outside this
checkout with its code first on ``PYTHONPATH``, each with a CPU worker and the same
documents stored. For each
prompt size the rounds alternate baseline, candidate, and a ``noop`` round trip
(the ceiling: the request path with no work) and a ``keyed`` round trip
(``cb_reorder_plan`` of the same key with a zero budget: the key's tokens
sent, decoded and answered ``[]`` through the CPU pool hop, no lookup work), in
two modes:

* ``repeat``: the same prompt every round (a new request id each time), as
  ``bench_blend.py`` measures;
* ``fresh``: every round's prompt ends with 40 new random tokens, so its raw
  bytes were never seen (no per-prompt memo can help); the hits are the same.

Both servers get upstream's token form (a msgpack list), then are asked again
the way this checkout's client asks (:class:`~benchmarks.bench_blend.TokenForm`:
the uint32 blob form, or the list after the server refused a blob once): the
candidate takes blobs (``candidate-blob``), a baseline before the blob form gets
lists again. Both servers get the same number of requests (the noop and keyed
round trips too; the candidate's are timed): a server asked less often answers
slower, and unequal loads showed as a 0.8x "gain" of identical code. ``keyed-blob``
is the keyed round trip with a blob.

Prints p50 per server and mode, the candidate/baseline ratio, and the noop p50,
then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_blend import BLOCK, CHUNK, TokenForm, key, poll
from benchmarks.common import machine_info, percentile
from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.transfer.layout import KVFormat, KVLayout
from tests.server_process import clean_env, server_on_free_ports

MODES = ("repeat", "fresh")


def tree_packages(tree: Path, scratch: Path) -> Path:
    """A folder of links to ``tree``'s import packages: its core, bundle and every plugin's.

    First on the baseline server's ``PYTHONPATH`` it makes that server run the
    other tree's code; the entry points (this checkout's editable install) name
    modules, which then resolve to the other tree's.
    """
    folder = scratch / "baseline-packages"
    folder.mkdir()
    packages = [tree / "lmcache_core", tree / "lmcache_plugins"]
    packages += sorted(p.parent for p in tree.glob("plugins/*/src/*/__init__.py"))
    for package in packages:
        if package.is_dir():
            (folder / package.name).symlink_to(package)
    return folder


def server_args() -> tuple[str, ...]:
    return (
        "--engine-type",
        "blend",
        "--l1-size-gb",
        "1",
        "--eviction-policy",
        "LRU",
        "--max-cpu-workers",
        "1",
        "--max-gpu-workers",
        "1",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    baseline = parser.add_mutually_exclusive_group(required=True)
    baseline.add_argument("--baseline-src", help="the baseline blend plugin's src folder alone")
    baseline.add_argument(
        "--baseline-tree",
        help="another checkout: its core and every plugin run the baseline server",
    )
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 17, 29, 64])
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="bench-blend-ab-")
    if args.baseline_tree:
        first = str(tree_packages(Path(args.baseline_tree).resolve(), Path(scratch.name)))
    else:
        first = str(Path(args.baseline_src).resolve())
    base_env = clean_env(PYTHONPATH=os.pathsep.join([first, os.environ.get("PYTHONPATH", "")]))
    layout = KVLayout(KVFormat.NHD, 1, 64 * 16 + 1, BLOCK, 1, 8, torch.bfloat16)
    report: dict[str, Any] = {"machine": machine_info(), "sizes": {}}
    with ExitStack() as stack:
        stack.callback(scratch.cleanup)  # last: after the servers that run in it
        servers = {
            # Started outside this checkout: `python -c` puts the working directory first on
            # sys.path, which would shadow the baseline's PYTHONPATH with this tree's code.
            "baseline": stack.enter_context(
                server_on_free_ports(*server_args(), env=base_env, cwd=scratch.name)
            ),
            "candidate": stack.enter_context(server_on_free_ports(*server_args())),
        }
        clients = {
            name: stack.enter_context(MPClient(s.zmq_url, timeout=60.0))
            for name, s in servers.items()
        }
        workers = {}
        for name, client in clients.items():
            worker = stack.enter_context(CpuKVWorker(client, layout, model_name="bench-ab"))
            worker.register()
            workers[name] = worker
        rng = random.Random(5)
        forms = {name: TokenForm() for name in clients}
        for size in args.sizes:
            docs = [[rng.randrange(128000) for _ in range(CHUNK)] for _ in range(size)]
            stored = [t for d in docs for t in d]
            blocks = list(range(1, 1 + len(stored) // BLOCK))
            for worker in workers.values():
                assert worker.store(key(worker, stored, f"s{size}", rank=True), blocks)
            body = docs[0] + [t for d in reversed(docs[1:]) for t in d]
            repeat_tail = docs[0][:40]
            # Both servers are asked as often (the baseline's blob asks fall back to lists after
            # its first refusal): an idle server answers slower, so unequal loads bias the A/B.
            askers = [*clients, "baseline-blob", "candidate-blob"]
            times: dict[str, list[float]] = {f"{n}/{m}": [] for n in askers for m in MODES} | {
                "noop": [],
                "keyed": [],
                "keyed-blob": [],
            }
            for i in range(args.rounds):
                fresh_tail = [rng.randrange(128000) for _ in range(40)]
                alt_tail = [rng.randrange(128000) for _ in range(40)]
                for mode in MODES:
                    query = body + (repeat_tail if mode == "repeat" else fresh_tail)
                    order = askers if i % 2 == 0 else list(reversed(askers))
                    for name in order:
                        server = name.removesuffix("-blob")
                        client, worker = clients[server], workers[server]
                        rid = f"{mode}{size}-{i}"
                        if name.endswith("-blob"):  # the key built before the clock, as below
                            form, asked = forms[server], query
                            if mode == "fresh" and not form.blob:
                                # A list again, of another fresh prompt: the same one would be
                                # a repeat, which would make the next fresh round cheaper.
                                asked = body + alt_tail
                            lookup_key = form.key(worker, asked, rid)
                            started = time.perf_counter()
                            result = form.lookup(client, lookup_key, worker, asked)
                            assert forms["candidate"].blob, "the candidate refused the blob form"
                        else:
                            lookup_key = key(worker, query, rid, rank=False)
                            started = time.perf_counter()
                            result = poll(client, lookup_key)
                        times[f"{name}/{mode}"].append(time.perf_counter() - started)
                        client.end_session(rid)
                        hits = len(result.non_prefix_segments)
                        hits += result.prefix_coverage_tokens // CHUNK
                        assert hits == size, (name, size, hits)
                for name, client in clients.items():  # both (equal loads), the candidate timed
                    timed = name == "candidate"
                    started = time.perf_counter()
                    assert client.call("noop") == "OK"
                    if timed:
                        times["noop"].append(time.perf_counter() - started)
                    for label, as_blob in (("keyed", False), ("keyed-blob", True)):
                        keyed = key(
                            workers[name],
                            body + fresh_tail,
                            f"{label}{size}-{i}",
                            rank=False,
                            blob=as_blob,
                        )
                        started = time.perf_counter()
                        assert client.call("cb_reorder_plan", keyed, 0, 0) == []
                        if timed:
                            times[label].append(time.perf_counter() - started)
            row = {name: percentile(values, 0.5) * 1e3 for name, values in times.items()}
            for mode in MODES:
                row[f"ratio/{mode}"] = row[f"candidate/{mode}"] / row[f"baseline/{mode}"]
                row[f"ratio-blob/{mode}"] = row[f"candidate-blob/{mode}"] / row[f"baseline/{mode}"]
            report["sizes"][str(size)] = row
    print(
        "| chunks | mode | baseline p50 ms | candidate p50 ms | candidate/baseline "
        "| candidate blob p50 ms | blob/baseline | noop ms | keyed ms | keyed blob ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, row in report["sizes"].items():
        for mode in MODES:
            print(
                f"| {size} | {mode} | {row[f'baseline/{mode}']:.3f} | "
                f"{row[f'candidate/{mode}']:.3f} | {row[f'ratio/{mode}']:.2f} | "
                f"{row[f'candidate-blob/{mode}']:.3f} | {row[f'ratio-blob/{mode}']:.2f} | "
                f"{row['noop']:.3f} | {row['keyed']:.3f} | {row['keyed-blob']:.3f} |"
            )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
