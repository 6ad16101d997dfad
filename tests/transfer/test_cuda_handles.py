"""CUDA handle decoding from upstream's own encodings, and GPU UUID -> ordinal mapping.

``upstream_device_handles.json`` holds the Ext data upstream LMCache 0.5.6's
``DeviceIPCWrapper.Serialize`` produced (``tests/compat/drive_upstream_cuda_handles.py
encode``; the compat test checks the file is still what upstream produces).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import torch

from lmcache_core.protocol.codec import ProtocolError, decode_device_handles, encode_device_handle
from lmcache_core.protocol.errors import NotSupportedError
from lmcache_core.protocol.types import CudaHandle, CudaRawHandle, TensorMetadata
from lmcache_core.transfer.cuda_devices import normalize_uuid, ordinal_for_uuid
from lmcache_core.transfer.cuda_handles import (
    handle_tag,
    parse_cuda_handle,
    parse_cuda_handles,
)

FIXTURE = json.loads(Path(__file__).with_name("upstream_device_handles.json").read_text())
VALUES: dict[str, Any] = FIXTURE["values"]


def upstream(tag: str) -> Any:
    """The handle upstream encoded for ``tag``, through our wire decoder."""
    ext = msgspec.msgpack.Ext(1, bytes.fromhex(FIXTURE[tag]))
    (handle,) = decode_device_handles([ext])
    return handle


def test_upstream_cuda_storage_handle_is_parsed_field_by_field() -> None:
    record = parse_cuda_handle(upstream("cuda"))
    expected = VALUES["cuda_handle"]
    assert record.tag == "cuda"
    assert record.storage is not None and record.raw_handle is None
    storage = record.storage
    assert storage.device == expected[0]
    assert storage.ipc_handle.hex() == expected[1]
    assert storage.storage_nbytes == expected[2] == record.range_nbytes
    assert storage.storage_offset_bytes == expected[3]
    assert storage.ref_counter_handle is not None
    assert storage.ref_counter_handle.hex() == expected[4]
    assert storage.ref_counter_offset == expected[5]
    assert storage.event_handle is not None and storage.event_handle.hex() == expected[6]
    assert storage.event_sync_required is expected[7] is True
    view = record.view
    assert view.dtype is torch.bfloat16
    assert list(view.shape) == VALUES["shape"]
    assert view.stride == torch.empty(VALUES["shape"]).stride()
    assert view.storage_offset == 32
    assert view.device_uuid == VALUES["uuid"]
    assert view.nbytes == VALUES["nbytes"]
    assert view.byte_span() == VALUES["nbytes"] + 32 * 2
    assert record.allocation_key == storage.ipc_handle


def test_upstream_raw_cuda_handle_is_parsed() -> None:
    record = parse_cuda_handle(upstream("cuda_raw"))
    assert record.tag == "cuda_raw" and record.storage is None
    assert record.raw_handle is not None and record.raw_handle.hex() == VALUES["raw_handle"]
    assert record.alloc_offset == 8192
    assert record.range_nbytes == VALUES["nbytes"] // 2
    assert record.view.dtype is torch.float8_e4m3fn
    assert record.view.storage_offset == 0
    assert record.allocation_key == record.raw_handle


@pytest.mark.parametrize("tag", ["cuda_vmm", "musa", "npu"])
def test_other_device_tags_are_not_supported_naming_the_tag(tag: str) -> None:
    handle = upstream(tag)
    assert handle_tag(handle) == tag
    with pytest.raises(NotSupportedError, match=rf"device handle type {tag} not supported"):
        parse_cuda_handles([upstream("cuda"), handle])


def test_a_registration_mixing_cpu_shm_and_cuda_is_refused() -> None:
    from lmcache_core.protocol.types import CpuShmHandle

    shm = CpuShmHandle(version=1, metadata=upstream("cuda").metadata, shm_name="x", nbytes=1)
    with pytest.raises(ValueError, match=r"kv_cache\[1\] is a cpu_shm handle"):
        parse_cuda_handles([upstream("cuda"), shm])


META = TensorMetadata("float16", (2, 4, 4, 2, 16), (512, 128, 32, 16, 1), 0, "GPU-abc")
SPAN = 2 * 4 * 4 * 2 * 16 * 2
GOOD_TUPLE = (0, b"\x01" * 64, SPAN, 0, b"/ref", 0, b"\x02" * 64, False)


def cuda(handle: tuple[Any, ...], meta: TensorMetadata = META) -> CudaHandle:
    """A ``cuda`` handle as decoded off the wire (through our encoder and decoder)."""
    wire = encode_device_handle(CudaHandle(version=1, metadata=meta, handle=handle))
    (decoded,) = decode_device_handles([wire])
    assert isinstance(decoded, CudaHandle)
    return decoded


@pytest.mark.parametrize(
    ("handle", "why"),
    [
        (GOOD_TUPLE[:7], "8-tuple"),
        ((*GOOD_TUPLE[:7], 0), "event-sync flag must be a bool"),
        ((True, *GOOD_TUPLE[1:]), "storage device must be an int"),
        ((0, None, *GOOD_TUPLE[2:]), "no IPC handle"),
        ((0, "text", *GOOD_TUPLE[2:]), "must be bytes"),
        ((0, GOOD_TUPLE[1], SPAN - 1, *GOOD_TUPLE[3:]), "more than its"),
        ((0, GOOD_TUPLE[1], SPAN, -1, *GOOD_TUPLE[4:]), "storage offset must be an int"),
        ((*GOOD_TUPLE[:6], 5, False), "event handle must be bytes"),
    ],
)
def test_malformed_cuda_storage_handles_are_refused(handle: tuple[Any, ...], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_cuda_handle(cuda(handle))


def test_a_well_formed_cuda_handle_parses() -> None:
    record = parse_cuda_handle(cuda(GOOD_TUPLE))
    assert record.view.byte_span() == SPAN and record.view.device_uuid == "GPU-abc"


def test_unknown_dtype_and_rank_mismatch_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_cuda_handle(cuda(GOOD_TUPLE, TensorMetadata("nope", (1,), (1,), 0, "u")))
    with pytest.raises(ValueError, match="differ in rank"):
        parse_cuda_handle(cuda(GOOD_TUPLE, TensorMetadata("float16", (1, 2), (1,), 0, "u")))


def test_raw_handle_span_and_length() -> None:
    raw = CudaRawHandle(
        version=1, metadata=META, ipc_handle=b"\x03" * 64, alloc_offset=0, nbytes=SPAN - 2
    )
    (decoded,) = decode_device_handles([encode_device_handle(raw)])
    assert isinstance(decoded, CudaRawHandle)
    with pytest.raises(ValueError, match="cuda_raw handle"):
        parse_cuda_handle(decoded)
    short = msgspec.msgpack.encode(
        {
            "type": "cuda_raw",
            "ipc_handle": b"x" * 63,
            "alloc_offset": 0,
            "nbytes": 1,
            "version": 1,
            "metadata": msgspec.structs.asdict(META),
        }
    )
    with pytest.raises(ProtocolError):
        decode_device_handles([msgspec.msgpack.Ext(1, short)])


UUIDS = [
    "6e1f0c4a-1111-2222-3333-444455556666",
    "GPU-9A8B7C6D-aaaa-bbbb-cccc-ddddeeeeffff",
]


def test_uuid_maps_to_the_local_ordinal_whatever_the_spelling() -> None:
    assert ordinal_for_uuid("GPU-6E1F0C4A-1111-2222-3333-444455556666", UUIDS) == 0
    assert ordinal_for_uuid("9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff", UUIDS) == 1
    assert normalize_uuid(" GPU-AbC ") == "abc"


def test_different_visible_devices_on_each_side() -> None:
    # The worker sees all GPUs, the server only GPUs 2 and 3 (CUDA_VISIBLE_DEVICES=2,3):
    # the worker's GPU 3 is the server's ordinal 1.
    physical = [f"uuid-{i}" for i in range(4)]
    server_visible = physical[2:]
    assert ordinal_for_uuid(physical[3], server_visible) == 1
    with pytest.raises(ValueError, match=r"not visible to this server.*CUDA_VISIBLE_DEVICES"):
        ordinal_for_uuid(physical[0], server_visible)
    with pytest.raises(ValueError, match="visible: none"):
        ordinal_for_uuid(physical[0], [])
