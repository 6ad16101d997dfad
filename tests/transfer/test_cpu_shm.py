"""KV tensors in POSIX shared memory: real segments, a real second process."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lmcache_core.transfer import (
    KVFormat,
    KVLayout,
    MappedShmTensor,
    PagedKVCache,
    ShmTensorSpec,
    create_shm_tensor,
)
from lmcache_core.transfer.cpu_shm import mappings_pending_release

CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    from lmcache_core.transfer import MappedShmTensor, ShmTensorSpec

    fields = json.loads(sys.argv[1])
    fields["shape"] = tuple(fields["shape"])
    fields["stride"] = tuple(fields["stride"])
    with MappedShmTensor(ShmTensorSpec(**fields)) as mapped:
        t = mapped.tensor
        expected = torch.arange(t.numel(), dtype=torch.float32).view(t.shape).to(t.dtype)
        if not torch.equal(t, expected):
            sys.exit("child: the parent's writes are not visible")
        t.mul_(-1)  # the parent checks it sees this
    print("child ok")
    """
)


def maps_mention(name: str, address: int | None = None) -> bool:
    """Whether /proc/self/maps lists the segment (at ``address``, if given)."""
    with open("/proc/self/maps") as f:
        for line in f:
            if f"/dev/shm/{name}" not in line:
                continue
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if address is None or start <= address < end:
                return True
    return False


def spec_json(spec: ShmTensorSpec) -> str:
    return json.dumps(dataclasses.asdict(spec))


def test_second_process_sees_writes_both_ways(shm_names):
    name = shm_names()
    tensor, spec, cleanup = create_shm_tensor(name, (2, 5, 4, 3), torch.bfloat16)
    try:
        assert spec.nbytes == 2 * 5 * 4 * 3 * 2
        assert spec.dtype == "bfloat16" and spec.stride == (60, 12, 3, 1)
        tensor.copy_(torch.arange(tensor.numel(), dtype=torch.float32).view(tensor.shape))
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, spec_json(spec)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=root,
            env={**os.environ, "PYTHONPATH": root},
        )
        assert proc.returncode == 0, proc.stderr
        assert "child ok" in proc.stdout
        want = -torch.arange(tensor.numel(), dtype=torch.float32).view(tensor.shape)
        assert torch.equal(tensor, want.to(torch.bfloat16))
    finally:
        cleanup()
    assert not os.path.exists(f"/dev/shm/{name}")
    cleanup()  # idempotent


def test_close_releases_the_mapping(shm_names):
    name = shm_names()
    tensor, spec, cleanup = create_shm_tensor(name, (64, 1024), torch.float32)
    del tensor
    cleanup_done = False
    try:
        mapped = MappedShmTensor(spec)
        address = mapped.tensor.data_ptr()
        assert maps_mention(name, address)
        mapped.tensor.fill_(3.0)
        assert not mapped.closed
        mapped.close()
        assert mapped.closed
        assert not maps_mention(name, address)
        assert maps_mention(name)  # the worker side's own mapping, until its cleanup
        mapped.close()  # idempotent
        with pytest.raises(ValueError, match="closed"):
            _ = mapped.tensor
        cleanup()
        cleanup_done = True
        assert not maps_mention(name)
    finally:
        if not cleanup_done:
            cleanup()


def test_close_with_a_live_view_defers_the_unmap(shm_names):
    """Unmapping under a live view would crash the server: the mapping waits for the view."""
    name = shm_names()
    tensor, spec, cleanup = create_shm_tensor(name, (1024,), torch.int64)
    tensor.fill_(7)
    mapped = MappedShmTensor(spec)
    address = mapped.tensor.data_ptr()
    view = mapped.tensor[10:20]
    mapped.close()
    assert maps_mention(name, address)
    assert name in mappings_pending_release()
    assert int(view.sum()) == 70  # still readable, not a dangling pointer
    del view
    gc.collect()
    assert not maps_mention(name, address)
    # The worker side: its cleanup unlinks at once and unmaps when its tensor goes.
    cleanup()
    assert not os.path.exists(f"/dev/shm/{name}")
    assert maps_mention(name)
    del tensor
    gc.collect()
    assert not maps_mention(name)
    assert name not in mappings_pending_release()


@pytest.mark.parametrize("cache_first", [True, False], ids=["cache-first", "mapping-first"])
def test_unregister_releases_a_paged_cache_mapping(shm_names, cache_first):
    """The server's unregister: close the PagedKVCache and the mappings, in either order."""
    layout = KVLayout(KVFormat.NHD, 2, 8, 4, 2, 8, torch.float16)
    names, cleanups, mapped, specs = [], [], [], []
    for _ in range(layout.num_layers):
        names.append(shm_names())
        tensor, spec, cleanup = create_shm_tensor(names[-1], layout.layer_shape(), layout.dtype)
        del tensor
        cleanups.append(cleanup)
        specs.append(spec)
        mapped.append(MappedShmTensor(spec))
    cache = PagedKVCache([m.tensor for m in mapped], layout)
    objs = [torch.empty(layout.object_nbytes(4), dtype=torch.uint8)]
    addresses = [m.tensor.data_ptr() for m in mapped]
    for cleanup in cleanups:
        cleanup()  # the worker exits: segments unlinked, the server's mappings stay valid
    with pytest.raises(FileNotFoundError):
        MappedShmTensor(specs[0])
    cache.gather([3], 4, objs)
    if cache_first:
        cache.close()
        for m in mapped:
            m.close()
    else:
        for m in mapped:
            m.close()
        assert all(maps_mention(n, a) for n, a in zip(names, addresses, strict=True))
        cache.close()
    assert not any(maps_mention(n, a) for n, a in zip(names, addresses, strict=True))
    assert not set(names) & set(mappings_pending_release())
    with pytest.raises(ValueError, match="closed"):
        cache.gather([3], 4, objs)
    cache.close()  # idempotent


def test_strided_spec_maps_a_sub_view(shm_names):
    name = shm_names()
    tensor, spec, cleanup = create_shm_tensor(name, (6, 8), torch.float16)
    try:
        tensor.copy_(torch.arange(48, dtype=torch.float16).view(6, 8))
        # Every other column of rows 1..4, as a worker would send a non-contiguous layer.
        sub = tensor[1:5, ::2]
        sub_spec = dataclasses.replace(
            spec,
            shape=tuple(sub.shape),
            stride=sub.stride(),
            storage_offset=sub.storage_offset(),
        )
        with MappedShmTensor(sub_spec) as mapped:
            assert torch.equal(mapped.tensor, sub)
            mapped.tensor.fill_(-1)
        assert torch.equal(sub, torch.full_like(sub, -1))
        assert tensor[0].eq(torch.arange(8, dtype=torch.float16)).all()
    finally:
        cleanup()


def test_metadata_round_trip():
    spec = ShmTensorSpec("lmcache_kv_1_0", 4096, "bfloat16", (2, 4, 16), (64, 16, 1), 0)
    meta = spec.to_metadata("GPU-0")
    assert meta == {
        "dtype": "bfloat16",
        "shape": [2, 4, 16],
        "stride": [64, 16, 1],
        "storage_offset": 0,
        "device_uuid": "GPU-0",
    }
    assert ShmTensorSpec.from_metadata("lmcache_kv_1_0", 4096, meta) == spec
    with pytest.raises(ValueError, match="incomplete"):
        ShmTensorSpec.from_metadata("x", 1, {"dtype": "bfloat16"})
    with pytest.raises(ValueError, match="dtype must be a string"):
        ShmTensorSpec.from_metadata("x", 1, {**meta, "dtype": 5})


def _spec(name: str, **changes) -> ShmTensorSpec:
    base = ShmTensorSpec(name, 4096, "float32", (32, 32), (32, 1), 0)
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shm_name": "../etc/passwd"}, "must not contain '/'"),
        ({"shm_name": "a/b"}, "must not contain '/'"),
        ({"shm_name": "/lmcache"}, "must not contain '/'"),
        ({"shm_name": ".."}, "not a valid file name"),
        ({"shm_name": "a\0b"}, "not a valid file name"),
        ({"shm_name": ""}, "non-empty"),
        ({"shm_name": "x" * 300}, "longer than 255"),
        ({"dtype": "float33"}, "unknown dtype"),
        ({"nbytes": 0}, "nbytes must be"),
        ({"shape": (32, 32, 1)}, "differ in length"),
        ({"stride": (32, -1)}, "stride must be"),
        ({"storage_offset": -1}, "storage_offset must be"),
        ({"shape": (33, 32)}, "spans 4224 bytes, more than the 4096"),
        ({"storage_offset": 1}, "spans 4100 bytes"),
        ({"stride": (33, 1)}, "spans 4220 bytes"),
        ({"dtype": "float64"}, "spans 8192 bytes"),
    ],
)
def test_bad_specs_are_rejected_before_opening(changes, message):
    with pytest.raises(ValueError, match=message):
        MappedShmTensor(_spec("lmcache_test_never_created", **changes))


def test_segment_problems(shm_names, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MappedShmTensor(_spec(shm_names()))

    name = shm_names()
    _, _, cleanup = create_shm_tensor(name, (16,), torch.float32)  # 64 bytes
    try:
        with pytest.raises(ValueError, match="has 64 bytes, the handle claims 4096"):
            MappedShmTensor(_spec(name))
        with pytest.raises(FileExistsError):
            create_shm_tensor(name, (16,), torch.float32)
    finally:
        cleanup()

    target = tmp_path / "secret"
    target.write_bytes(b"\0" * 4096)
    link = shm_names()
    os.symlink(target, f"/dev/shm/{link}")
    with pytest.raises(ValueError, match="cannot open"):
        MappedShmTensor(_spec(link))

    directory = shm_names()
    os.mkdir(f"/dev/shm/{directory}")
    with pytest.raises(ValueError):
        MappedShmTensor(_spec(directory))

    with pytest.raises(ValueError, match="empty"):
        create_shm_tensor(shm_names(), (0, 4), torch.float32)
    with pytest.raises(ValueError, match="'/'"):
        create_shm_tensor("a/b", (4,), torch.float32)
