"""``--l1-devdax-path``: a real server whose L1 arena is a file mapped as a Device-DAX device.

No Device-DAX device exists here; a file on the disk stands in for it (the same
``mmap(MAP_SHARED)``), so the tests can check that the objects' bytes are in the
file. Objects travel inline (``--shm-name ""`` is required with a DAX L1).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.data_path.conftest import Server
from tests.data_path.kv import CHUNK, fresh_tokens, request_id
from tests.data_path.test_engine_driven import key, object_bytes, registration
from tests.helpers import run_subprocess
from tests.server_process import free_port

MIB = 1 << 20
DAX_L1 = ("--eviction-policy", "LRU", "--chunk-size", str(CHUNK), "--no-l1-use-lazy")
DAX_L1 = (*DAX_L1, "--shm-name", "", "--supported-transfer-mode", "engine_driven")


def _store_and_retrieve(server: Server, model: str) -> bytes:
    """Store three chunks inline and read them back; returns the bytes stored."""
    client = server.client()
    payload = registration(model, dtype="float32")
    client.register_engine_driven(payload)
    tokens = fresh_tokens(3 * CHUNK)
    stored = key(payload, tokens, 3 * CHUNK, request_id())
    client.prepare_store(stored, payload.instance_id)
    data = random.randbytes(3 * object_bytes(payload))
    assert client.commit_store(stored, payload.instance_id, data) is True
    wanted = key(payload, tokens, 3 * CHUNK, request_id())
    got = client.prepare_retrieve(wanted, payload.instance_id)
    assert got.success is True and got.data == data
    assert client.commit_retrieve(wanted, payload.instance_id) is True
    client.unregister_engine_driven(payload.instance_id)
    return data


def test_the_l1_arena_is_the_dax_file(tmp_path: Path) -> None:
    path = tmp_path / "dax0.0"
    server = Server("devdax", ("--l1-size-gb", "0.01", "--l1-devdax-path", str(path), *DAX_L1))
    try:
        server.wait()
        l1 = server.l1()
        assert (l1["kind"], l1["devdax_path"], l1["dram_bytes"]) == ("devdax", str(path), 0)
        data = _store_and_retrieve(server, "devdax-l1")
        contents = path.read_bytes()
        nbytes = len(data) // 3
        # Every object's bytes are in the file: L1 lives in the DAX mapping.
        for index in range(3):
            assert data[index * nbytes : (index + 1) * nbytes] in contents
    finally:
        server.terminate()
        server.join()
    assert path.stat().st_size >= int(0.01 * (1 << 30))


@pytest.mark.slow  # a second server process
def test_a_dax_adapter_on_the_same_device_lends_its_size_as_overflow(tmp_path: Path) -> None:
    path = tmp_path / "dax0.0"
    lender = {"type": "dax", "device_path": str(path), "max_dax_size_gb": 0.005, "slot_bytes": 4096}
    other = {"type": "mock", "max_size_gb": 0.01, "mock_bandwidth_gb": 100}
    server = Server(
        "devdax-hybrid",
        (
            *("--l1-size-gb", "0.004", "--l1-devdax-path", str(path), *DAX_L1),
            *("--l2-adapter", json.dumps(lender), "--l2-adapter", json.dumps(other)),
        ),
    )
    try:
        server.wait()
        l1 = server.l1()
        assert l1["kind"] == "devdax" and l1["dram_bytes"] >= int(0.004 * (1 << 30))
        assert l1["capacity_bytes"] >= int(0.009 * (1 << 30))
        adapters = server.status()["engine"]["l2"]["adapters"]
        assert [adapter["type"] for adapter in adapters] == ["mock"]  # the dax one is L1 now
        assert "lends" in server.output() and "as overflow" in server.output()
        _store_and_retrieve(server, "devdax-hybrid")
    finally:
        server.terminate()
        server.join()
    assert path.stat().st_size == int(0.005 * (1 << 30))


@pytest.mark.slow  # real server processes
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ("--l1-devdax-path", "/nonexistent-dir/dax0.0"),
            "error: --l1-devdax-path: cannot allocate the L1 arena: cannot open the DAX path "
            "/nonexistent-dir/dax0.0: No such file or directory",
        ),
        (
            (
                *("--l1-devdax-path", "/tmp/lmcache-devdax-refused"),
                "--l2-adapter",
                json.dumps(
                    {
                        "type": "dax",
                        "slot_bytes": 4096,
                        "devices": [
                            {"device_path": "/tmp/lmcache-devdax-refused", "max_dax_size_gb": 1},
                            {"device_path": "/tmp/lmcache-devdax-other", "max_dax_size_gb": 1},
                        ],
                    }
                ),
            ),
            "error: --l1-devdax-path: --l2-adapter #1 (dax) lists /tmp/lmcache-devdax-refused "
            "among 2 devices",
        ),
        (
            (
                *("--l1-devdax-path", "/tmp/lmcache-devdax-refused"),
                *(
                    arg
                    for _ in range(2)
                    for arg in (
                        "--l2-adapter",
                        json.dumps(
                            {
                                "type": "dax",
                                "slot_bytes": 4096,
                                "device_path": "/tmp/lmcache-devdax-refused",
                                "max_dax_size_gb": 1,
                            }
                        ),
                    )
                ),
            ),
            "error: --l1-devdax-path: dax adapters #1, #2 all name /tmp/lmcache-devdax-refused; "
            "only one may lend it",
        ),
    ],
    ids=["missing-dir", "shared-devices-list", "two-lenders"],
)
def test_startup_errors_name_the_rule(extra: tuple[str, ...], message: str) -> None:
    ports = ("--port", str(free_port()), "--http-port", str(free_port()))
    result = run_subprocess(
        "server", "--l1-size-gb", "0.01", *DAX_L1, "--host", "127.0.0.1", *ports, *extra
    )
    output = result.out + result.err
    assert result.code == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), output
    assert "Traceback" not in output
