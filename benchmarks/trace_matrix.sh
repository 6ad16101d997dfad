#!/usr/bin/env bash
# The trace replay figures of docs/benchmarks.md ("Trace replay"), one JSON per run in OUT.
# Usage: benchmarks/trace_matrix.sh OUT [REQUESTS]   (needs LMCACHE_COMPAT_PYTHON for upstream)
# Then: .venv/bin/python -m lmcache_bench_trace.plots OUT docs/
set -euo pipefail
out=${1:?output folder}
requests=${2:-600}
trace=${LMCACHE_TRACE:-../shared/traces/mooncake_synthetic_trace.jsonl}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
run() {  # name, then bench_trace arguments
  local name=$1
  shift
  echo "== $name $(date -u +%T)"
  "$py" benchmarks/bench_trace.py --trace "$trace" --max-requests "$requests" \
    --as-fast-as-possible --simulate --quiet --json-out "$out/$name.json" "$@" \
    || echo "!! $name failed"
}
# Hit ratio against L1 size (16 KiB chunks): ours, upstream, and the simulator.
for slots in 2048 8192 32768; do
  gb=$(python3 -c "print($slots * 16384 / 2**30)")
  run "size-ours-lru-$slots" --concurrency 4 --l1-size-gb "$gb"
  run "size-upstream-lru-$slots" --concurrency 4 --l1-size-gb "$gb" --server upstream
  run "size-ours-arc-$slots" --concurrency 4 --l1-size-gb "$gb" --eviction-policy ARC
done
# Latency against concurrency (one L1 size), our server and upstream's, our client.
gb=$(python3 -c "print(8192 * 16384 / 2**30)")
for n in 1 4 8 16; do
  run "conc-ours-$n" --concurrency "$n" --l1-size-gb "$gb"
  run "conc-upstream-$n" --concurrency "$n" --l1-size-gb "$gb" --server upstream
done
