"""Runtime plugins: discovery and interpreters (unit), and a really started server running them.

The server tests start ``lmcache server`` as a subprocess with real plugin
scripts (Python with and without a shebang, shell, a crashing one, one that
finishes, the heartbeat example posting to a real local HTTP receiver), then
check what the plugins saw, the server log, ``/status`` and, after SIGTERM,
that no plugin process or grandchild is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmcache_core.config.loading import load_config
from lmcache_core.errors import StartupError
from lmcache_core.runtime_plugins.discovery import (
    discover,
    find_scripts,
    plugin_names,
    resolve_interpreter,
)
from lmcache_core.runtime_plugins.environment import (
    ENV_CONFIG,
    ENV_EXTRA_CONFIG,
    PluginEnvironment,
    server_http_url,
)
from lmcache_core.runtime_plugins.supervisor import RestartPolicy, describe_exit
from tests.helpers import REQUIRED_VALUES, run_subprocess
from tests.server_process import (
    LiveServer,
    clean_env,
    free_port,
    output_of,
    server_on_free_ports,
)

# Starts real servers (seconds each): outside the quick loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
HEARTBEAT = REPO / "examples" / "runtime_plugins" / "heartbeat.py"
BASE = ("--l1-size-gb", "1", "--eviction-policy", "LRU")
MASK = "**********"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- interpreter resolution (unit) -------------------------------------------


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A PATH directory holding an executable ``python3`` and ``mytool``."""
    bin_dir = tmp_path / "bin"
    for name in ("python3", "mytool"):
        write(bin_dir / name, "#!/bin/sh\nexit 0\n").chmod(0o755)
    return bin_dir


def test_no_shebang_py_runs_under_the_servers_python(tmp_path: Path) -> None:
    script = write(tmp_path / "p.py", "print(1)\n")
    assert resolve_interpreter(script, python="/opt/py/bin/python") == ("/opt/py/bin/python",)
    assert resolve_interpreter(script) == (sys.executable,)


def test_no_shebang_sh_runs_under_bash(tmp_path: Path) -> None:
    script = write(tmp_path / "s.sh", "echo hi\n")
    assert resolve_interpreter(script) == (shutil.which("bash"),)


@pytest.mark.parametrize(
    ("shebang", "expected"),
    [
        ("#!/usr/bin/env python3", ("{bin}/python3",)),
        ("#!/usr/bin/env -S python3 -u -X dev", ("{bin}/python3", "-u", "-X", "dev")),
        ("#!/usr/bin/env mytool --flag\r", ("{bin}/mytool", "--flag")),
        ("#! /bin/sh -e", ("/bin/sh", "-e")),
        ("#!mytool", ("{bin}/mytool",)),
        # env options other than -S, or VAR=value: env itself runs it.
        ("#!/usr/bin/env FOO=1 python3", ("/usr/bin/env", "FOO=1", "python3")),
    ],
)
def test_shebang_is_honoured(
    tmp_path: Path, fake_bin: Path, shebang: str, expected: tuple[str, ...]
) -> None:
    # A .sh suffix on a python shebang: the shebang wins over the suffix.
    script = write(tmp_path / "plugin.sh", f"{shebang}\nprint(1)\n")
    wanted = tuple(part.format(bin=fake_bin) for part in expected)
    assert resolve_interpreter(script, path_env=str(fake_bin)) == wanted


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("a.py", "#!/usr/bin/env no-such-interpreter\n", "'no-such-interpreter' (through env)"),
        ("b.py", "#!/no/such/python\n", "/no/such/python, which is not an executable"),
        ("c.py", "#!\n", "names no interpreter"),
        ("d.txt", "echo hi\n", "neither a .py nor a .sh file"),
        ("e", "plain\n", "neither a .py nor a .sh file"),
    ],
)
def test_unusable_interpreter_is_a_clear_startup_error(
    tmp_path: Path, fake_bin: Path, name: str, text: str, needle: str
) -> None:
    script = write(tmp_path / name, text)
    with pytest.raises(StartupError) as caught:
        resolve_interpreter(script, path_env=str(fake_bin))
    message = str(caught.value)
    assert message.startswith("--runtime-plugin-locations: ")
    assert str(script) in message and needle in message


def test_directories_are_searched_recursively_in_sorted_order(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    for relative in (
        "b.py",
        "a.sh",
        "sub/c.py",
        "sub/deeper/a.py",
        "_helper.py",
        "__init__.py",
        ".hidden/x.py",
        "_private/y.py",
        "__pycache__/z.py",
        "notes.txt",
        "tool",
    ):
        write(root / relative, "x = 1\n")
    extra = write(tmp_path / "explicit.txt", "#!/bin/sh\n")
    found = find_scripts([str(root), str(extra), str(root / "b.py")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "plugins/a.sh",
        "plugins/b.py",
        "plugins/sub/c.py",
        "plugins/sub/deeper/a.py",
        "explicit.txt",
    ]
    assert plugin_names(found) == ["a", "b", "c", "a_2", "explicit"]


def test_missing_location_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"--runtime-plugin-locations: .*nope does not exist"):
        discover([str(tmp_path / "nope")])


def test_restart_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(initial_backoff_seconds=0.5, max_backoff_seconds=3.0)
    assert [policy.backoff(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


def test_environment_masks_server_secrets_but_not_the_extra_config() -> None:
    adapter = {"type": "mock", "max_size_gb": 1, "mock_bandwidth_gb": 10}
    config = load_config(
        {
            **REQUIRED_VALUES,
            "runtime_plugin_config": {"heartbeat_url": "http://x/", "api_token": "t0k"},
            "l2_adapter": [json.dumps(adapter)],
            "http_host": "0.0.0.0",
            "http_port": 9123,
        }
    )
    env = PluginEnvironment(config, base={"KEEP": "me"}, server_pid=4242).for_plugin("hb")
    document = json.loads(env[ENV_CONFIG])
    assert document["mp"]["runtime_plugin_config"]["api_token"] == MASK
    assert document["runtime_plugin_extra_config"]["api_token"] == "t0k"
    assert document["server"] == {
        "instance_id": config.mp.instance_id,
        "http_url": "http://127.0.0.1:9123",
        "pid": 4242,
    }
    assert json.loads(env[ENV_EXTRA_CONFIG]) == {"heartbeat_url": "http://x/", "api_token": "t0k"}
    assert env["KEEP"] == "me" and env["LMCACHE_RUNTIME_PLUGIN_NAME"] == "hb"
    assert env["LMCACHE_PLUGIN_CONFIG"] == env[ENV_CONFIG]
    assert server_http_url("::", 80) == "http://[::1]:80"
    assert server_http_url("10.0.0.5", 81) == "http://10.0.0.5:81"


def test_dry_run_reports_a_missing_location(tmp_path: Path) -> None:
    result = run_subprocess(
        "server", *BASE, "--runtime-plugin-locations", str(tmp_path / "gone"), "--dry-run"
    )
    assert result.code == 0, result.err
    errors = result.json()["startup"]["errors"]
    assert errors == [f"--runtime-plugin-locations: {tmp_path / 'gone'} does not exist"]


def test_server_refuses_to_start_with_an_unusable_script(tmp_path: Path) -> None:
    write(tmp_path / "plugins" / "ok.py", "print(1)\n")
    write(tmp_path / "explicit.cfg", "no shebang here\n")
    result = run_subprocess(
        "server",
        *BASE,
        "--http-port",
        str(free_port()),
        "--port",
        str(free_port()),
        "--runtime-plugin-locations",
        str(tmp_path / "plugins"),
        str(tmp_path / "explicit.cfg"),
        timeout=60,
    )
    assert result.code == 1
    assert "Traceback" not in result.err + result.out
    assert "has no shebang line and is neither a .py nor a .sh file" in result.err


# --- a real server running real plugins ---------------------------------------

ENV_DUMP = """\
import json, os, sys, time
out = os.path.join(os.environ["RTP_OUT_DIR"], "env_dump.json")
seen = {k: v for k, v in os.environ.items() if k.startswith(("LMCACHE_", "RTP_", "PYTHON"))}
with open(out + ".tmp", "w") as f:
    json.dump({"env": seen, "executable": sys.executable}, f)
os.replace(out + ".tmp", out)
print("env_dump wrote its environment")
print("L" * 10000)
time.sleep(600)
"""

VIA_ENV = """\
#!/usr/bin/env python3
import os, time
with open(os.path.join(os.environ["RTP_OUT_DIR"], "via_env.txt"), "w") as f:
    f.write(os.environ.get("RTP_WRAPPED", "not wrapped"))
time.sleep(600)
"""

SHELL = """\
echo "shell plugin says hi, bash $BASH_VERSION"
sleep 600 &
echo $! > "$RTP_OUT_DIR/shell_grandchild.pid"
wait
"""

CRASH = """\
import sys
print("crash plugin is about to fail", flush=True)
sys.exit(7)
"""

DONE = """\
print("done plugin did its job")
"""

LEAVER = """\
sleep 600 &
echo $! > "$RTP_OUT_DIR/leaver_child.pid"
exit 0
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server collecting the JSON bodies POSTed to it."""
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            body["_content_type"] = self.headers.get("Content-Type")
            bodies.append(body)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/heartbeat", bodies
    finally:
        server.shutdown()
        server.server_close()


def wrapper_bin(directory: Path) -> Path:
    """A PATH directory whose ``python3`` marks the plugins it runs, then runs this Python."""
    write(
        directory / "python3",
        f'#!/bin/sh\nexport RTP_WRAPPED="wrapped python3"\nexec "{sys.executable}" "$@"\n',
    ).chmod(0o755)
    return directory


class PluginServer:
    """A started server and what the plugins wrote."""

    def __init__(
        self, process: subprocess.Popen[str], url: str, out: Path, instance: str, bin_dir: Path
    ) -> None:
        self.process, self.url, self.out, self.instance, self.bin_dir = (
            process,
            url,
            out,
            instance,
            bin_dir,
        )

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = httpx.get(f"{self.url}/status", timeout=5).json()
        return document

    def plugin(self, name: str) -> dict[str, Any]:
        rows: dict[str, dict[str, Any]] = {
            row["name"]: row for row in self.status()["runtime_plugins"]
        }
        return rows[name]

    def wait_for(self, what: str, check: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{output_of(self.process)}")


@contextmanager
def plugins_running(
    tmp: Path, locations: list[Path], extra: dict[str, Any], instance: str
) -> Iterator[tuple[LiveServer, Path]]:
    """A healthy server running the plugins at ``locations``; (the server, the wrapper PATH dir)."""
    out = tmp / "out"
    out.mkdir()
    bin_dir = wrapper_bin(tmp / "bin")
    env = clean_env(
        RTP_OUT_DIR=str(out),
        RTP_INHERITED="from the server",
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    with server_on_free_ports(
        *BASE,
        *("--instance-id", instance),
        *("--runtime-plugin-locations", *[str(p) for p in locations]),
        *("--runtime-plugin-config", json.dumps(extra)),
        env=env,
    ) as server:
        yield server, bin_dir


@pytest.fixture(scope="module")
def plugin_server(
    tmp_path_factory: pytest.TempPathFactory, receiver: tuple[str, list[dict[str, Any]]]
) -> Iterator[PluginServer]:
    tmp = tmp_path_factory.mktemp("runtime_plugins")
    plugins = tmp / "plugins"
    write(plugins / "env_dump.py", ENV_DUMP)
    write(plugins / "nested" / "via_env.py", VIA_ENV)
    write(plugins / "shell.sh", SHELL)
    write(plugins / "crash.py", CRASH)
    write(plugins / "done.py", DONE)
    write(plugins / "leaver.sh", LEAVER)
    write(plugins / "_not_a_plugin.py", "raise SystemExit('must not run')\n")
    extra = {"heartbeat_url": receiver[0], "interval_s": 0.2, "api_token": "tok-secret-42"}
    instance = "rtp-test-instance"
    with plugins_running(tmp, [plugins, HEARTBEAT], extra, instance) as (server, bin_dir):
        yield PluginServer(server.process, server.http_url, tmp / "out", instance, bin_dir)


def test_plugins_are_listed_in_status_in_launch_order(plugin_server: PluginServer) -> None:
    rows = plugin_server.status()["runtime_plugins"]
    assert [row["name"] for row in rows] == [
        "crash",
        "done",
        "env_dump",
        "leaver",
        "via_env",
        "shell",
        "heartbeat",
    ]
    env_dump = plugin_server.plugin("env_dump")
    assert env_dump["state"] == "running" and env_dump["restarts"] == 0
    assert env_dump["last_exit_code"] is None
    assert env_dump["path"].endswith("/plugins/env_dump.py")
    assert isinstance(env_dump["started_at"], float)
    assert os.path.exists(f"/proc/{env_dump['pid']}")
    health = httpx.get(f"{plugin_server.url}/healthcheck").json()
    assert health["components"]["runtime_plugins"]["ok"] is True


def test_environment_reaches_the_plugin(plugin_server: PluginServer) -> None:
    dump = plugin_server.out / "env_dump.json"
    plugin_server.wait_for("env_dump.json", dump.exists)
    seen = json.loads(dump.read_text())
    env = seen["env"]
    assert seen["executable"] == sys.executable  # no shebang: the server's own Python
    assert env["RTP_INHERITED"] == "from the server"
    config = json.loads(env["LMCACHE_RUNTIME_PLUGIN_CONFIG"])
    assert config["mp"]["instance_id"] == plugin_server.instance
    assert config["http"]["http_port"] == int(plugin_server.url.rsplit(":", 1)[1])
    assert config["mp"]["runtime_plugin_config"]["api_token"] == MASK
    assert config["runtime_plugin_extra_config"]["api_token"] == "tok-secret-42"
    assert config["server"]["http_url"] == plugin_server.url
    extra = json.loads(env["LMCACHE_RUNTIME_PLUGIN_EXTRA_CONFIG"])
    assert extra["interval_s"] == 0.2 and extra["api_token"] == "tok-secret-42"
    assert env["LMCACHE_RUNTIME_PLUGIN_ROLE"] == ""
    assert env["LMCACHE_RUNTIME_PLUGIN_WORKER_COUNT"] == "1"
    assert env["LMCACHE_RUNTIME_PLUGIN_WORKER_ID"] == "0"
    for legacy in ("ROLE", "CONFIG", "WORKER_COUNT", "WORKER_ID"):
        assert env[f"LMCACHE_PLUGIN_{legacy}"] == env[f"LMCACHE_RUNTIME_PLUGIN_{legacy}"]
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["LMCACHE_RUNTIME_PLUGIN_NAME"] == "env_dump"
    assert env["LMCACHE_RUNTIME_PLUGIN_SERVER_URL"] == plugin_server.url
    assert env["LMCACHE_RUNTIME_PLUGIN_INSTANCE_ID"] == plugin_server.instance
    assert env["LMCACHE_RUNTIME_PLUGIN_SERVER_PID"] == str(plugin_server.process.pid)


def test_shebang_and_shell_interpreters(plugin_server: PluginServer) -> None:
    marker = plugin_server.out / "via_env.txt"
    plugin_server.wait_for("via_env.txt", marker.exists)
    plugin_server.wait_for("via_env.txt content", marker.read_text)
    # `#!/usr/bin/env python3` found the python3 first on the server's PATH.
    assert marker.read_text() == "wrapped python3"
    assert plugin_server.plugin("via_env")["interpreter"] == [
        str(plugin_server.bin_dir / "python3")
    ]
    assert plugin_server.plugin("shell")["interpreter"] == [shutil.which("bash")]
    assert plugin_server.plugin("heartbeat")["interpreter"] == [
        str(plugin_server.bin_dir / "python3")
    ]


def test_output_is_forwarded_under_the_plugins_name(plugin_server: PluginServer) -> None:
    def logged() -> str:
        text = output_of(plugin_server.process)
        return text if "lmcache.runtime_plugin.shell: shell plugin says hi" in text else ""

    text = plugin_server.wait_for("forwarded output", logged)
    assert "INFO lmcache.runtime_plugin.shell: shell plugin says hi, bash " in text
    assert "INFO lmcache.runtime_plugin.env_dump: env_dump wrote its environment" in text
    assert "must not run" not in text
    long_lines = [line for line in text.splitlines() if "runtime_plugin.env_dump: LLL" in line]
    assert len(long_lines) == 1
    assert long_lines[0].endswith(" [line cut]")
    assert long_lines[0].count("L") < 4200  # cut at 4096 bytes, the rest dropped
    assert plugin_server.plugin("env_dump")["last_output"][-1].endswith("[line cut]")


def test_a_crashing_plugin_is_restarted_then_marked_failed(plugin_server: PluginServer) -> None:
    row = plugin_server.wait_for(
        "the crash plugin to fail",
        lambda: (r := plugin_server.plugin("crash"))["state"] == "failed" and r,
    )
    assert row["restarts"] == 5
    assert row["last_exit_code"] == 7
    text = output_of(plugin_server.process)
    assert text.count("lmcache.runtime_plugin.crash: crash plugin is about to fail") == 6
    for attempt in range(1, 6):
        assert f"runtime plugin crash crashed (exit code 7); restart {attempt} of 5" in text
    assert "runtime plugin crash failed (exit code 7) after 5 restarts" in text
    # The server carries on, and says so.
    health = httpx.get(f"{plugin_server.url}/healthcheck")
    assert health.status_code == 200
    assert "1 failed" in health.json()["components"]["runtime_plugins"]["detail"]
    assert plugin_server.plugin("env_dump")["state"] == "running"


def test_a_plugin_that_exits_zero_is_finished_not_restarted(plugin_server: PluginServer) -> None:
    row = plugin_server.wait_for(
        "the done plugin to finish",
        lambda: (r := plugin_server.plugin("done"))["state"] == "exited" and r,
    )
    assert row["last_exit_code"] == 0 and row["restarts"] == 0
    assert row["last_output"] == ["done plugin did its job"]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="checks processes through /proc")
def test_what_a_finished_plugin_left_behind_is_terminated_and_reaped(
    plugin_server: PluginServer,
) -> None:
    plugin_server.wait_for(
        "the leaver plugin to finish", lambda: plugin_server.plugin("leaver")["state"] == "exited"
    )
    pid = int((plugin_server.out / "leaver_child.pid").read_text())
    # Its background `sleep` was terminated and, re-parented to the server, reaped: no zombie.
    plugin_server.wait_for("the leftover sleep to vanish", lambda: not alive(pid), timeout=10)
    assert "runtime plugin leaver left processes behind; terminating them" in output_of(
        plugin_server.process
    )


def test_heartbeat_example_posts_status_summaries(
    plugin_server: PluginServer, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    _, bodies = receiver
    plugin_server.wait_for("two heartbeats", lambda: len(bodies) >= 2)
    first, second = bodies[0], bodies[1]
    assert first["_content_type"] == "application/json"
    assert first["instance_id"] == plugin_server.instance
    assert second["sequence"] == first["sequence"] + 1
    assert first["components"]["http"] is True and first["components"]["request_server"] is True
    assert first["runtime_plugins"]["heartbeat"] == "running"
    assert first["l1"]["capacity_bytes"] == 1 << 30


# --- shutdown -----------------------------------------------------------------

STUBBORN = """\
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
IGNORE = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", IGNORE])
with open(os.path.join(os.environ["RTP_OUT_DIR"], "stubborn.pids"), "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
print("stubborn ignores SIGTERM", flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` exists at all (a zombie counts: nobody reaped it)."""
    return os.path.exists(f"/proc/{pid}")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="checks processes through /proc")
def test_sigterm_terminates_every_plugin_and_grandchild(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    write(plugins / "shell.sh", SHELL)
    write(plugins / "stubborn.py", STUBBORN)
    out = tmp_path / "out"
    with plugins_running(tmp_path, [plugins], {}, "rtp-shutdown") as (server, _):
        process, url = server.process, server.http_url
        deadline = time.monotonic() + 30
        while not (
            (out / "stubborn.pids").exists()
            and (out / "shell_grandchild.pid").exists()
            and (out / "shell_grandchild.pid").read_text().strip()
            and (out / "stubborn.pids").read_text()
        ):
            assert time.monotonic() < deadline, output_of(process)
            time.sleep(0.1)
        rows = httpx.get(f"{url}/status").json()["runtime_plugins"]
        pids = [row["pid"] for row in rows]
        pids += [int(p) for p in (out / "stubborn.pids").read_text().split()]
        pids.append(int((out / "shell_grandchild.pid").read_text()))
        assert all(alive(pid) for pid in pids)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
        elapsed = time.monotonic() - sent
    text = output_of(process)  # all of it: leaving the block joined the drain thread
    assert code == 0, text
    assert elapsed < 5.0
    assert "runtime plugin stubborn did not exit within 1.5 s of SIGTERM; killing it" in text
    assert "still alive after SIGKILL" not in text
    assert [pid for pid in pids if alive(pid)] == []
    assert "lmcache server stopped" in text
