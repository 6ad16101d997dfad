"""lmcache-bench-trace: replay a Mooncake-format workload trace against an MP server.

The replay (``benchmarks/bench_trace.py``, ``lmcache bench trace``), its engine
clients (ours and upstream 0.5.6's adapters), and the offline simulator it is
checked against.
"""

from __future__ import annotations

__version__ = "0.1.0"
