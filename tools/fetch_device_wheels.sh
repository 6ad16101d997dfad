#!/usr/bin/env bash
# Put what tools/device_check.sh installs on the device in .whl/ (git-ignored via
# .git/info/exclude): this tree's own distributions, built here (pure Python), and the
# server's dependencies that the device image lacks, for CPython 3.12 on x86-64 Linux
# (see /work/.library/device/README.md and KINDS.md: torch, cuda-bindings, numpy, msgpack,
# xxhash, prometheus-client, typer, httpx, pytest, hypothesis are there already).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
rm -rf .whl && mkdir -p .whl
py="${PYTHON:-.venv/bin/python}"
# Our own wheels: the core and every plugin folder requirements.txt installs (pure Python).
mapfile -t local < <(sed -n 's/^-e \(\.\/\?.*\)$/\1/p' requirements.txt)
"$py" -m pip wheel -q --no-deps -w .whl "${local[@]}"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux_2_34_x86_64)
# The versions this tree is tested with (the local venv's), so they fit together there.
names=(pluggy pydantic pydantic-core pydantic-settings python-dotenv annotated-types
       typing-inspection fastapi starlette uvicorn pyzmq msgspec blake3 opentelemetry-sdk
       opentelemetry-api opentelemetry-semantic-conventions importlib-metadata pytest-timeout
       redis boto3 botocore s3transfer jmespath opentelemetry-exporter-otlp-proto-grpc
       opentelemetry-exporter-otlp-proto-common opentelemetry-proto googleapis-common-protos)
mapfile -t pins < <("$py" - "${names[@]}" <<'PY'
import importlib.metadata as md
import sys

for name in sys.argv[1:]:
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        print(name)
PY
)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl "${pins[@]}"
du -sh .whl
