"""A change to the blend lookup measured on a live server, alternating round by round (issue 11).

Run: ``.venv/bin/python benchmarks/bench_blend_alternate.py PATCH.py [--compat-python PY]
[--rounds N] [--sizes 5 17 29 64] [--modes repeat fresh]``.

In-process figures (``profile_blend_lookup.py --alternate``) call the handler back
to back with warm caches; a live server sleeps in its receive between requests
and each microsecond of Python on its path costs two to five there, mostly in
memory it no longer caches. This starts our blend server (the peer benchmark's
flags) with ``benchmarks/live_alternate/sitecustomize.py``, which installs
``PATCH.py``'s ``install(switch)`` and turns the switch on for odd rounds, and
drives it with upstream 0.5.6's client (``blend_peer_driver.py``, the same
prompts as ``bench_blend_peer.py``). Each row is the median lookup of the even
rounds (as is) and of the odd ones (patched: usually the behaviour before the
change), the first ten rounds of each size and mode left out (the prompt cache
filling). Prints a Markdown table; the server is stopped by its PID.

The switch is set when the handler starts: a patch of what runs before it (the
request's decode) must read the round from the request itself, or it follows
the previous round's switch and the two columns swap
(``alternates/key_decode_unpacker.py`` reads it from the frame).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from lmcache_bench_trace.servers import start_server

from benchmarks.bench_blend_peer import SERVER_FLAGS, drive

HERE = Path(__file__).resolve().parent
WARM_ROUNDS = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patch", help="a file defining install(switch)")
    parser.add_argument(
        "--compat-python",
        default=os.environ.get("LMCACHE_COMPAT_PYTHON", ""),
        help="upstream 0.5.6's environment's python (default: $LMCACHE_COMPAT_PYTHON)",
    )
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 17, 64])
    parser.add_argument(
        "--modes", nargs="+", choices=("repeat", "fresh"), default=["repeat", "fresh"]
    )
    args = parser.parse_args()
    if not args.compat_python:
        parser.error("needs --compat-python or LMCACHE_COMPAT_PYTHON")
    logs = Path(tempfile.mkdtemp(prefix="blend-alternate-"))
    paths = [str(HERE / "live_alternate"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    os.environ["LMCACHE_BENCH_ALTERNATE"] = str(Path(args.patch).resolve())
    server = start_server("ours", SERVER_FLAGS, logs / "ours.log")
    try:
        settings = {
            "servers": {"ours": server.url},
            "sizes": args.sizes,
            "rounds": args.rounds,
            "modes": args.modes,
        }
        figures = drive(args.compat_python, logs, [settings])["ours"]
    finally:
        server.stop()
    print("| chunks | mode | as is p50 ms | patched p50 ms | as is / patched |")
    print("| --- | --- | --- | --- | --- |")
    for size, modes in figures.items():
        for mode, data in modes.items():
            times = data["lookup_s"][2 * WARM_ROUNDS :]
            as_is = statistics.median(times[0::2]) * 1e3
            patched = statistics.median(times[1::2]) * 1e3
            print(f"| {size} | {mode} | {as_is:.3f} | {patched:.3f} | {as_is / patched:.3f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
