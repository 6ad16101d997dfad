"""Replay a Mooncake-format trace against a real server (issue 15).

Run: ``.venv/bin/python benchmarks/bench_trace.py --trace TRACE.jsonl
[--url tcp://HOST:PORT] [--client ours|upstream] [--concurrency N] [--max-requests N]
[--as-fast-as-possible] [--simulate] [--json-out FILE]``

The logic is the plugin ``lmcache-bench-trace`` (also ``lmcache bench trace``);
see its ``--help`` for every option and docs/benchmarks.md, "Trace replay".
"""

from __future__ import annotations

import sys

from lmcache_bench_trace.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
