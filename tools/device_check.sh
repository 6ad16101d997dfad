#!/usr/bin/env bash
# The GPU checks of issue 10 in one prepared run on a CUDA host (the device machine).
#
# Prepare here (a machine with pip and the network) first: tools/fetch_device_wheels.sh
# puts the server's dependencies and this tree's own wheels in .whl/ (ignored by git).
# Then run on the device, carrying .whl:  bash tools/device_check.sh
# It installs the wheels into /tmp/site (never touching the host's torch), runs the gpu
# tests, then the benchmarks (bench_gpu, bench_pinning), and writes everything to $OUT (or ./device-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/device-out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 LMCACHE_TRACK_USAGE=false DO_NOT_TRACK=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/env.txt"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel install failed" | tee -a "$out/env.txt"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  echo "no .whl/ carried: using what the host has" | tee -a "$out/env.txt"
  export PYTHONPATH="$PWD"
fi
# One device command may run 600 s at most: `device_check.sh tests` (the gpu tests) and
# `device_check.sh bench` (the two benchmarks) are the two calls; no argument runs both.
part="${1:-all}"
rc=0
# tests/gpu includes test_blend_gpu.py (CacheBlend's GPU retrieve: one more server start
# and two short cases, well under a minute of the 420 s).
if [ "$part" = all ] || [ "$part" = tests ]; then
  timeout 420 python3 -m pytest tests/gpu -x -q -p no:cacheprovider -m gpu --timeout 300 \
    2>&1 | tee "$out/gpu_tests.log" || rc=$?
fi
if [ "$part" = all ] || [ "$part" = bench ]; then
  timeout 240 python3 -m benchmarks.bench_gpu --out "$out/bench_gpu.json" \
    2>&1 | tee "$out/bench_gpu.log" || rc=$?
  timeout 150 python3 -m benchmarks.bench_pinning --l1-gb 32 --init-gb 1 \
    --out "$out/bench_pinning.json" 2>&1 | tee "$out/bench_pinning.log" || rc=$?
fi
echo "device_check $part rc=$rc" | tee -a "$out/env.txt"
exit "$rc"
