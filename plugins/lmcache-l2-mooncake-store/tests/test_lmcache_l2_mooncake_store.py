"""Configuration and start-up of the ``mooncake_store`` adapter (no cluster needed here)."""

from __future__ import annotations

import re
import time
from typing import Any

import lmcache_l2_mooncake_store.plugin
import pytest
from lmcache_l2_mooncake_store.client import MooncakeUnavailable
from lmcache_l2_mooncake_store.config import MooncakeStoreAdapterConfig, parse_size
from lmcache_l2_mooncake_store.testing import free_port, needs_mooncake
from pydantic import ValidationError

MINIMAL: dict[str, Any] = {
    "type": "mooncake_store",
    "local_hostname": "127.0.0.1",
    "master_server_addr": "127.0.0.1:50051",
}


def test_defaults_and_setup_dictionary() -> None:
    config = MooncakeStoreAdapterConfig.model_validate(MINIMAL)
    assert config.num_workers == 4
    assert config.workers_for("store") == 4
    assert config.mooncake_setup() == {
        "local_hostname": "127.0.0.1",
        "metadata_server": "P2PHANDSHAKE",
        "master_server_addr": "127.0.0.1:50051",
        "protocol": "tcp",
        "global_segment_size": "3355443200",
        "local_buffer_size": str(16 << 20),
        "rdma_devices": "",
    }


def test_upstream_spellings_are_aliases() -> None:
    config = MooncakeStoreAdapterConfig.model_validate(
        {
            "type": "mooncake_store",
            "local_hostname": "10.0.0.2",
            "master_server_address": "10.0.0.1:50051",
            "device_name": "mlx5_0",
            "per_op_workers": {"lookup": 2},
        }
    )
    assert config.master_server_addr == "10.0.0.1:50051"
    assert config.rdma_devices == "mlx5_0"
    assert config.workers_for("lookup") == 2
    assert config.workers_for("delete") == 4


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (1234, 1234), ("512MB", 512 << 20), ("1 GB", 1 << 30), ("2GiB", 2 << 30), ("7", 7)],
)
def test_sizes(value: int | str, expected: int) -> None:
    assert parse_size(value) == expected
    config = MooncakeStoreAdapterConfig.model_validate({**MINIMAL, "global_segment_size": value})
    assert config.global_segment_size == expected


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"master_server_adr": "127.0.0.1:1"}, "master_server_adr"),  # a misspelt key
        ({"master_server_address": "127.0.0.1:2"}, "master_server_addr"),  # both spellings
        ({"master_server_addr": "localhost"}, "master_server_addr"),
        ({"master_server_addr": "host:99999"}, "master_server_addr"),
        ({"metadata_server": "localhost:8080"}, "metadata_server"),
        ({"protocol": "ib"}, "protocol"),
        ({"global_segment_size": "lots"}, "global_segment_size"),
        ({"global_segment_size": -1}, "global_segment_size"),
        ({"replica_num": 0}, "replica_num"),
        ({"num_workers": 0}, "num_workers"),
        ({"per_op_workers": {"scan": 2}}, "per_op_workers"),
        ({"per_op_workers": {"store": 0}}, "per_op_workers"),
        ({"connect_timeout_s": 0}, "connect_timeout_s"),
        ({"local_hostname": ""}, "local_hostname"),
    ],
)
def test_bad_configs_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        MooncakeStoreAdapterConfig.model_validate({**MINIMAL, **change})


def test_required_fields() -> None:
    with pytest.raises(ValidationError, match="master_server_addr"):
        MooncakeStoreAdapterConfig.model_validate({"type": "mooncake_store", "local_hostname": "h"})


def test_registered_as_implemented() -> None:
    (spec,) = lmcache_l2_mooncake_store.plugin.lmcache_register_l2_adapters()
    assert spec.name == "mooncake_store"
    assert spec.config_model is MooncakeStoreAdapterConfig
    assert spec.not_implemented is None


@needs_mooncake
def test_unreachable_master_fails_fast_naming_it() -> None:
    port = free_port()  # nothing listens there
    config = MooncakeStoreAdapterConfig.model_validate(
        {**MINIMAL, "master_server_addr": f"127.0.0.1:{port}", "connect_timeout_s": 1}
    )
    from lmcache_l2_mooncake_store.adapter import MooncakeStoreAdapter

    started = time.monotonic()
    with pytest.raises(MooncakeUnavailable) as failure:
        MooncakeStoreAdapter(config)
    assert time.monotonic() - started < 3.0
    message = str(failure.value)
    assert "\n" not in message
    assert f"master_server_addr 127.0.0.1:{port} is not reachable" in message


@needs_mooncake
def test_a_misspelt_master_host_fails_fast_naming_it() -> None:
    from lmcache_l2_mooncake_store.adapter import MooncakeStoreAdapter

    config = MooncakeStoreAdapterConfig.model_validate(
        {**MINIMAL, "master_server_addr": "mooncake-mastr.invalid:50051"}
    )
    started = time.monotonic()
    with pytest.raises(
        MooncakeUnavailable, match=re.escape("master_server_addr mooncake-mastr.invalid:50051")
    ):
        MooncakeStoreAdapter(config)
    assert time.monotonic() - started < 3.0


@needs_mooncake
def test_unreachable_http_metadata_server_fails_fast_naming_it() -> None:
    from lmcache_l2_mooncake_store.client import check_reachable

    port = free_port()
    with pytest.raises(MooncakeUnavailable, match=f"metadata_server 127.0.0.1:{port}"):
        check_reachable("127.0.0.1", port, "metadata_server", 0.5)


def test_rdma_without_an_arena_is_refused() -> None:
    from lmcache_l2_mooncake_store.adapter import MooncakeStoreAdapter

    config = MooncakeStoreAdapterConfig.model_validate({**MINIMAL, "protocol": "rdma"})
    with pytest.raises(MooncakeUnavailable, match="registers the L1 arena"):
        MooncakeStoreAdapter(config)


@needs_mooncake
def test_server_start_up_with_an_unreachable_master_is_one_line(tmp_path: Any) -> None:
    """``lmcache server`` exits 1 within seconds, one error line naming the master."""
    import json
    import subprocess
    import sys

    port = free_port()
    adapter = {**MINIMAL, "master_server_addr": f"127.0.0.1:{port}", "connect_timeout_s": 1}
    command = "from lmcache_core.cli.main import main; main()"
    args = ["server", "--l1-size-gb", "0.01", "--eviction-policy", "LRU", "--host", "127.0.0.1"]
    args += ["--port", str(free_port()), "--http-host", "127.0.0.1"]
    args += ["--http-port", str(free_port())]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", command, *args, "--l2-adapter", json.dumps(adapter)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: --l2-adapter #1: cannot start: master_server_addr 127.0.0.1:{port} is not "
        "reachable within 1 s (Connection refused)"
    ], output
    assert "Traceback" not in output
    assert time.monotonic() - started < 30.0
