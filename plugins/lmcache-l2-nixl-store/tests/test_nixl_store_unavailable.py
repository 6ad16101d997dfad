"""``nixl_store`` has no binding here: its reason, its factory, a real server refusing it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_nixl_store.plugin import DEPENDENCY, lmcache_register_l2_adapters

from lmcache_core.errors import PluginNotImplementedError
from lmcache_core.storage.l2.unavailable import is_installed

ADAPTER: dict[str, Any] = {
    "type": "nixl_store",
    "backend": "POSIX",
    "backend_params": {"file_path": "/tmp/l2", "use_direct_io": "false"},
    "pool_size": 4,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reason() -> str:
    [spec] = lmcache_register_l2_adapters()
    assert spec.not_implemented
    return spec.not_implemented


def test_without_the_library_the_reason_names_what_to_install() -> None:
    if is_installed(DEPENDENCY.module):
        pytest.skip(f"{DEPENDENCY.module} is installed here; the next test covers that case")
    text = reason()
    assert text.startswith(
        f"needs {DEPENDENCY.what} ({DEPENDENCY.install}), which is not installed"
    )
    assert "binding" in text
    [spec] = lmcache_register_l2_adapters()
    with pytest.raises(PluginNotImplementedError, match="which is not installed"):
        spec.factory(None)


def test_with_the_library_installed_the_missing_binding_is_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module of that name on sys.path: find_spec finds it (and nothing imports it).
    (tmp_path / f"{DEPENDENCY.module}.py").write_text("raise ImportError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = reason()
    assert text.startswith(
        f"{DEPENDENCY.what} is installed, but this build has no nixl_store binding"
    )
    assert "pip install" not in text
    assert DEPENDENCY.module not in sys.modules


def test_a_server_with_it_exits_with_one_error_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env["LMCACHE_PLUGINS_STRICT"] = "1"
    command = [sys.executable, "-c", "from lmcache_core.cli.main import main; main()", "server"]
    result = subprocess.run(
        [
            *command,
            *("--l1-size-gb", "0.05", "--eviction-policy", "LRU", "--host", "127.0.0.1"),
            *("--port", str(free_port()), "--http-host", "127.0.0.1"),
            *("--http-port", str(free_port()), "--l2-adapter", json.dumps(ADAPTER)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: --l2-adapter #1: l2_adapter 'nixl_store' is not implemented yet: " + reason()
    ]
    assert "Traceback" not in result.stdout
