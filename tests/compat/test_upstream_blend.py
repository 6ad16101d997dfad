"""Upstream LMCache 0.5.6's own client judges our blend server (``nox -s compat``).

``drive_upstream_blend.py`` runs in the compat venv, drives a ``--engine-type
blend`` server through upstream's ``LMCacheMPWorkerAdapter`` and its ZMQ client,
and expects the results upstream's own server gives (the reference's lookups
B-J, the retrieve gates, the wire encodings), except for two deliberate
differences it names: errors are answered instead of dropped
(``rope_invalid_*``, ``wire_*_answered_with_error``), and the full retrieve
returns True on CPU with the KV written, K re-rotated
(``cpu_retrieve_*``; upstream returns False on CPU and writes nothing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compat.upstream_run import needs_compat_python, run_driver
from tests.server_process import free_port, server_on_free_ports

DRIVER = Path(__file__).with_name("drive_upstream_blend.py")

pytestmark = needs_compat_python

DELIBERATE_DIFFERENCES = {
    "rope_invalid_kv_quant_int4": "answered with an error (upstream: no reply)",
    "rope_invalid_group_rot_0_0": "answered with an error (upstream: no reply)",
    "rope_invalid_group_to_cache_3": "answered with an error (upstream: no reply)",
    "wire_num_kv_readers_0_answered_with_error": "upstream: no reply",
    "wire_wrong_arg_count_answered_with_error": "upstream: no reply",
    "cpu_retrieve_writes": "True with the KV written (upstream on CPU: False)",
    "cpu_retrieve_k_rerotated": "upstream writes nothing on CPU",
    "cpu_retrieve_v_identical": "upstream writes nothing on CPU",
    "cpu_retrieve_prefix_untouched": "upstream writes nothing on CPU",
    "retrieve_already_applied_true": "upstream never applies on CPU",
}


def test_upstream_client_drives_the_blend_ops() -> None:
    port = free_port()
    args = ("--engine-type", "blend", "--l1-size-gb", "1", "--eviction-policy", "LRU")
    with server_on_free_ports(*args, "--port", str(port), timeout=180.0):
        checks = run_driver(DRIVER, f"tcp://127.0.0.1:{port}")
    assert all(outcome == "PASS" for outcome in checks.values()), checks
    assert set(DELIBERATE_DIFFERENCES) <= set(checks)
    assert len(checks) >= 30


def test_upstream_client_gets_upstreams_reorder_plans() -> None:
    # Upstream's measured rows (reference §10); ours is our own planner with its parameters.
    port = free_port()
    args = ("--engine-type", "blend", "--enable-blend-reorder", "--l1-size-gb", "1")
    with server_on_free_ports(
        *args, "--eviction-policy", "LRU", "--port", str(port), timeout=180.0
    ):
        checks = run_driver(DRIVER, f"tcp://127.0.0.1:{port}", "reorder")
    assert all(outcome == "PASS" for outcome in checks.values()), checks
    assert len([name for name in checks if name.startswith("reorder")]) == 7, checks


@pytest.mark.parametrize("clients", ["shared", "separate"])
def test_upstream_client_gets_the_same_hits_from_both_servers(clients: str) -> None:
    # bench_blend_peer's driver: the same documents stored in ours and in upstream's own
    # server through upstream's adapter, the same reordered lookups (repeated and with a
    # new tail) asked of both; every chunk is found by both, in both modes. "separate":
    # one driver per server, in lockstep (each round's ready/go/done exchange).
    from benchmarks.bench_blend_peer import run, summarise
    from tests.compat.upstream_run import COMPAT_PYTHON

    rows = summarise(run(COMPAT_PYTHON, [5, 17], 3, ["repeat", "fresh"], clients))
    assert [(r["chunks"], r["mode"]) for r in rows] == [
        (5, "repeat"),
        (5, "fresh"),
        (17, "repeat"),
        (17, "fresh"),
    ]
    for row in rows:
        assert row["ours_hit_chunks"] == row["upstream_hit_chunks"] == row["chunks"], row
        assert row["ours_p50_ms"] > 0 and row["upstream_p50_ms"] > 0
