"""Where a 64-chunk lookup's server-side time goes: cProfile of the handler in-process.

Run: ``.venv/bin/python benchmarks/profile_lookup.py [--lookups N] [--top N]``

Builds the same objects as ``bench_lookup_path.py`` (real L1, token hash cache,
lookup service, event bus without subscribers), fills L1 with a 64-chunk prefix,
and profiles ``lookup`` of that prefix (a full L1 hit) followed by the status query
and ``end_session`` a client sends. Prints the unprofiled median of each half
(the profiler inflates small calls), then the functions by own time. Use it to
find what to optimise; ``bench_lookup_path.py`` and ``bench_server.py --parts
lookups`` measure the result.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_lookup_path import CHUNK, CHUNKS, CONTEXT, build, fill, wire_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=3000, help="profiled lookups")
    parser.add_argument("--top", type=int, default=20, help="functions to list")
    args = parser.parse_args()
    rng = random.Random(5)
    toks = [rng.randrange(50000) for _ in range(CHUNKS * CHUNK)]
    service, l1, _tokens = build()
    fill(service, l1, toks)
    key = wire_key(toks, "hit")
    lookup_s, rest_s = [], []
    for _ in range(1000):  # unprofiled: the real figures
        start = time.perf_counter()
        service.lookup(CONTEXT, key, 1)
        middle = time.perf_counter()
        service.query_prefetch_status(CONTEXT, "hit")
        service.end_session(CONTEXT, "hit")
        lookup_s.append(middle - start)
        rest_s.append(time.perf_counter() - middle)
    print(f"lookup median {statistics.median(lookup_s) * 1e6:.1f} us (unprofiled)")
    print(f"query + end_session median {statistics.median(rest_s) * 1e6:.1f} us (unprofiled)")
    profile = cProfile.Profile()
    for _ in range(args.lookups):
        profile.enable()
        service.lookup(CONTEXT, key, 1)
        profile.disable()
        service.query_prefetch_status(CONTEXT, "hit")
        service.end_session(CONTEXT, "hit")
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
