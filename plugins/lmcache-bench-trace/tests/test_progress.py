"""The driver's progress bar sums the clients' progress files until every client exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lmcache_bench_trace.engine_client import write_progress
from lmcache_bench_trace.replay import watch_progress


def test_the_bar_counts_every_clients_finished_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outs = [tmp_path / "client-0.json", tmp_path / "client-1.json", tmp_path / "client-2.json"]
    write_progress(f"{outs[0]}.progress", 30)
    write_progress(f"{outs[1]}.progress", 20)
    (tmp_path / "client-2.json.progress").write_text("")  # caught mid-rewrite: counts 0
    procs = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    for proc in procs:
        proc.wait()
    watch_progress(outs, procs, total=100, width=10)
    line = capsys.readouterr().err.strip()
    assert line.endswith("[#####.....] 50/100 requests")
    write_progress(None, 5)  # no file named: nothing written, no error
