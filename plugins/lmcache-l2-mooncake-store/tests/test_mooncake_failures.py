"""The ``mooncake_store`` adapter when things die: the master, the client that stored.

Each test has a cluster of its own (master on loopback, stopped by PID), since it
kills part of it. Nothing here may raise out of the adapter: failures are misses,
counted in ``status()``, and the adapter recovers without being rebuilt.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import numpy as np
from lmcache_l2_mooncake_store.adapter import MooncakeStoreAdapter
from lmcache_l2_mooncake_store.config import MooncakeStoreAdapterConfig
from lmcache_l2_mooncake_store.testing import MooncakeCluster, listening_addresses, needs_mooncake

from lmcache_core.testing.l2_conformance import empty_buffers, make_keys, make_payloads, wait

pytestmark = needs_mooncake


def adapter_of(cluster: MooncakeCluster, **overrides: object) -> MooncakeStoreAdapter:
    config = MooncakeStoreAdapterConfig.model_validate(cluster.adapter_config(**overrides))
    adapter = MooncakeStoreAdapter(config)
    adapter.start()
    return adapter


def eventually(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_the_master_listens_on_loopback_only(own_cluster: MooncakeCluster) -> None:
    """No HTTP metadata server (clients use P2PHANDSHAKE): nothing of the master binds 0.0.0.0."""
    assert own_cluster.master is not None
    bound = listening_addresses(own_cluster.master.pid)
    assert bound == {
        ("127.0.0.1", own_cluster.rpc_port),
        ("127.0.0.1", own_cluster.metrics_port),
    }


def test_l1_arena_is_registered_once_and_moves_without_a_copy(
    own_cluster: MooncakeCluster,
) -> None:
    own_cluster.add_store_node(64 << 20)
    arena = np.zeros(4 << 20, dtype=np.uint8)
    config = MooncakeStoreAdapterConfig.model_validate(
        own_cluster.adapter_config(persist_enabled=False)
    )
    adapter = MooncakeStoreAdapter(config, l1_region=(int(arena.ctypes.data), arena.nbytes))
    adapter.start()
    adapter.buffers_are_scratch = True  # as the L2 tier declares: loads land in L1 directly
    try:
        assert adapter.status()["registered_bytes"] == arena.nbytes
        chunk = 256 << 10
        arena[: 4 * chunk] = np.frombuffer(os.urandom(4 * chunk), dtype=np.uint8)
        keys = make_keys(4, seed=41)
        sources = [arena[i * chunk : (i + 1) * chunk].data for i in range(4)]
        assert wait(adapter.submit_store(keys, sources)) == [True] * 4
        targets = [arena[(8 + i) * chunk : (9 + i) * chunk].data for i in range(4)]
        assert wait(adapter.submit_load(keys, targets)) == [True] * 4
        assert bytes(arena[8 * chunk : 12 * chunk]) == bytes(arena[: 4 * chunk])
    finally:
        adapter.close()


def test_master_killed_and_restarted(own_cluster: MooncakeCluster) -> None:
    own_cluster.add_store_node(64 << 20)
    adapter = adapter_of(own_cluster, persist_enabled=False)
    try:
        before, after = make_keys(4, seed=51), make_keys(4, seed=52)
        payloads = make_payloads([4096] * 4, seed=5)
        assert wait(adapter.submit_store(before, payloads)) == [True] * 4

        own_cluster.kill_master()
        assert wait(adapter.submit_lookup_and_lock(before)) == [False] * 4
        assert wait(adapter.submit_load(before, empty_buffers([4096] * 4))) == [False] * 4
        down = adapter.status()
        assert down["lookup_errors"] + down["rpc_failures"] + down["misses"] > 0

        own_cluster.start_master()
        # The store node and the adapter's client re-register with the new master by themselves.
        assert eventually(
            lambda: wait(adapter.submit_store(after, payloads)) == [True] * 4, timeout_s=20
        ), "no store succeeded after the master came back"
        buffers = empty_buffers([4096] * 4)
        assert wait(adapter.submit_load(after, buffers)) == [True] * 4
        assert [bytes(b) for b in buffers] == payloads
        # The old master's index died with it: the objects stored before are misses.
        assert wait(adapter.submit_lookup_and_lock(before)) == [False] * 4
        assert adapter.status()["is_healthy"] is True
    finally:
        adapter.close()


STORER = textwrap.dedent(
    """
    import sys, time
    from lmcache_l2_mooncake_store.adapter import MooncakeStoreAdapter
    from lmcache_l2_mooncake_store.config import MooncakeStoreAdapterConfig
    from lmcache_core.testing.l2_conformance import make_keys, make_payloads, wait
    config = MooncakeStoreAdapterConfig.model_validate({
        "type": "mooncake_store", "local_hostname": "127.0.0.1",
        "master_server_addr": sys.argv[1], "global_segment_size": 64 << 20,
        "local_buffer_size": 0})
    adapter = MooncakeStoreAdapter(config)
    keys = make_keys(4, seed=61)
    assert wait(adapter.submit_store(keys, make_payloads([8192] * 4, seed=6))) == [True] * 4
    print("stored", flush=True)
    time.sleep(120)
    """
)


def test_the_storing_client_dies(own_cluster: MooncakeCluster) -> None:
    # No store node: the objects can only live in the storing process's own segment.
    storer = subprocess.Popen(
        [sys.executable, "-c", STORER, own_cluster.master_address],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    reader = adapter_of(own_cluster)
    try:
        assert storer.stdout is not None
        assert storer.stdout.readline().strip() == b"stored"
        keys = make_keys(4, seed=61)
        payloads = make_payloads([8192] * 4, seed=6)
        assert wait(reader.submit_lookup_and_lock(keys)) == [True] * 4
        reader.unlock(keys)
        buffers = empty_buffers([8192] * 4)
        assert wait(reader.submit_load(keys, buffers)) == [True] * 4
        assert [bytes(b) for b in buffers] == payloads

        os.kill(storer.pid, signal.SIGKILL)
        storer.wait(timeout=10)
        # Its segment is gone: loads fail (counted) at once, lookups miss once the
        # master expires the dead client (client_ttl), and nothing raises meanwhile.
        assert wait(reader.submit_load(keys, empty_buffers([8192] * 4))) == [False] * 4
        assert eventually(
            lambda: wait(reader.submit_lookup_and_lock(keys)) == [False] * 4,
            timeout_s=own_cluster.client_ttl_s + 10,
        )
        status = reader.status()
        assert status["transfer_failures"] + status["misses"] >= 4
        assert status["is_healthy"] is True
    finally:
        if storer.poll() is None:
            os.kill(storer.pid, signal.SIGKILL)
            storer.wait(timeout=10)
        reader.close()


def test_replica_num_keeps_objects_when_a_store_node_dies(own_cluster: MooncakeCluster) -> None:
    nodes = [own_cluster.add_store_node(64 << 20) for _ in range(2)]
    adapter = adapter_of(own_cluster, replica_num=2, per_op_workers={"lookup": 2})
    single = adapter_of(own_cluster)  # the control: one replica each
    try:
        assert adapter._pools["lookup"]._max_workers == 2
        assert adapter._pools["store"]._max_workers == adapter.config.num_workers
        keys = make_keys(4, seed=71)
        payloads = make_payloads([16384] * 4, seed=7)
        assert wait(adapter.submit_store(keys, payloads)) == [True] * 4
        control = make_keys(16, seed=72)
        assert wait(single.submit_store(control, make_payloads([16384] * 16))) == [True] * 16
        own_cluster.kill_node(nodes[0])
        # Every object has a replica on the surviving node (a transfer from the dead one
        # may fail first; the read then goes to the other replica, or fails and is counted).
        buffers = empty_buffers([16384] * 4)
        assert eventually(
            lambda: wait(adapter.submit_load(keys, buffers)) == [True] * 4,
            timeout_s=own_cluster.client_ttl_s + 10,
        )
        assert [bytes(b) for b in buffers] == payloads
        # With one replica, the objects placed on the dead node are gone (1 in 65536 that
        # all 16 landed on the survivor).
        assert not all(wait(single.submit_load(control, empty_buffers([16384] * 16))))
    finally:
        single.close()
        adapter.close()
