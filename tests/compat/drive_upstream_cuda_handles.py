"""Upstream LMCache 0.5.6's own encoder and client with CUDA handles (run in the compat venv).

Usage:
    python drive_upstream_cuda_handles.py encode
        Prints one JSON line: for each tag, the Ext data upstream's
        ``DeviceIPCWrapper.Serialize`` produces (hex) and the values put in.
    python drive_upstream_cuda_handles.py register tcp://127.0.0.1:PORT
        Sends ``register_kv_cache`` with ``cuda`` handles through upstream's own
        RequestClient and prints one JSON line with the error it got back (a CPU-only
        server must refuse with one clear message, never hang).

No GPU is needed: the wrappers are restored from wire descriptors built from fixed
values (upstream's ``from_wire``), exactly what its worker would send for those values.
"""

import json
import os
import sys
import time

os.environ.setdefault("LMCACHE_TRACK_USAGE", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")

from lmcache.v1.platform.base.ipc_wire import (
    CudaIPCData,
    MusaIPCData,
    NpuIPCData,
    NpuPlaneData,
    RawCudaIPCData,
    TensorMetadata,
    VmmCudaIPCData,
)
from lmcache.v1.platform.base.ipc_wrapper import DeviceIPCWrapper
from lmcache.v1.platform.devices.cuda.ipc_wrapper import (
    CudaIPCWrapper,
    RawCudaIPCWrapper,
    VmmCudaIPCWrapper,
)

UUID = "3f6a1b2c-0d4e-4f50-8a61-72b3c4d5e6f7"
SHAPE = (2, 8, 16, 4, 64)  # NHD: [2, num_blocks, block_size, heads, head_dim]


def contiguous_stride(shape):
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= size
    return tuple(reversed(stride))


def metadata(dtype="bfloat16", offset=0):
    return TensorMetadata(
        dtype=dtype,
        shape=SHAPE,
        stride=contiguous_stride(SHAPE),
        storage_offset=offset,
        device_uuid=UUID,
    )


NBYTES = 2 * 8 * 16 * 4 * 64 * 2
CUDA_HANDLE = (
    0,  # device
    bytes(range(64)),  # cudaIpcMemHandle of the storage's allocation
    NBYTES + 4096,  # storage size in bytes
    4096,  # storage offset in bytes within the allocation
    b"/torch_12345_1_0",  # ref-counter shm handle
    3,  # ref-counter offset
    bytes(range(64, 128)),  # cudaIpcEventHandle
    True,  # event-sync required
)
RAW_HANDLE = bytes(range(100, 164))


def descriptors():
    """One upstream wire descriptor per tag, with the wrapper class upstream restores."""
    return {
        "cuda": (
            CudaIPCWrapper,
            CudaIPCData(version=1, metadata=metadata(offset=32), handle=CUDA_HANDLE),
        ),
        "cuda_raw": (
            RawCudaIPCWrapper,
            RawCudaIPCData(
                version=1,
                metadata=metadata("float8_e4m3fn"),
                ipc_handle=RAW_HANDLE,
                alloc_offset=8192,
                nbytes=NBYTES // 2,
            ),
        ),
        "cuda_vmm": (
            VmmCudaIPCWrapper,
            VmmCudaIPCData(
                version=1,
                metadata=metadata(),
                export_id=bytes(16),
                kind="posix_fd",
                fabric_blob=None,
                alloc_size=NBYTES * 2,
                alloc_offset=0,
                nbytes=NBYTES,
            ),
        ),
        "musa": (None, MusaIPCData(version=1, metadata=metadata(), handle=[0, b"h", 1])),
        "npu": (
            None,
            NpuIPCData(
                version=1, bare=True, planes=(NpuPlaneData(handle=(0, b"h"), metadata=metadata()),)
            ),
        ),
    }


def encode() -> None:
    import msgspec

    out = {}
    for tag, (cls, data) in descriptors().items():
        if cls is not None:
            raw = DeviceIPCWrapper.Serialize(cls.from_wire(data))
        else:  # upstream's musa/npu wrappers import their device runtime; same wire bytes
            raw = msgspec.msgpack.encode(data)
        out[tag] = raw.hex()
    out["values"] = {
        "uuid": UUID,
        "shape": list(SHAPE),
        "cuda_handle": [v.hex() if isinstance(v, bytes) else v for v in CUDA_HANDLE],
        "raw_handle": RAW_HANDLE.hex(),
        "nbytes": NBYTES,
    }
    print(json.dumps(out))


def register(url: str) -> None:
    import zmq
    from lmcache.utils import EngineType
    from lmcache.v1.multiprocess.transport.factory import RequestClientFactory

    client = RequestClientFactory.create(url, context=zmq.Context())
    report = {}
    for tag in ("cuda", "cuda_raw", "cuda_vmm"):
        cls, data = descriptors()[tag]
        wrappers = [cls.from_wire(data) for _ in range(2)]
        started = time.monotonic()
        try:
            client.register_kv_cache(
                4242, wrappers, "gpu-model", 1, EngineType.VLLM, {"kv_layout": "NHD"}, []
            ).result(timeout=20)
            report[tag] = {"error": None}
        except Exception as exc:  # noqa: BLE001 - whatever the future raises is the report
            report[tag] = {"error": f"{type(exc).__name__}: {exc}"}
        report[tag]["seconds"] = round(time.monotonic() - started, 3)
    report["ping"] = client.ping(None).result(timeout=10)
    print(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1] == "encode":
        encode()
    elif sys.argv[1] == "register":
        register(sys.argv[2])
    else:
        raise SystemExit(__doc__)
