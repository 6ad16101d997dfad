"""``POST /run_script``: the sandbox against escape attempts, its limits, and the endpoint.

The battery runs each script in a real sandbox process (``run_sandboxed``, as the
endpoint does) without a server; the endpoint tests use a really started server.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lmcache_core.http.run_script import ScriptFailure, ScriptLimits, run_sandboxed
from lmcache_core.http.script_sandbox import check_script, import_problems
from tests.test_admin_api import AdminServer, admin_server

ALLOWED = ["json", "math", "collections"]
LIMITS = ScriptLimits(time_s=3.0, output_bytes=64 * 1024, memory_bytes=256 << 20)
STATUS = {"instance_id": "node-1", "data_path": {"l1": {"used_bytes": 42}}}


def run(script: str) -> str:
    return run_sandboxed(script, ALLOWED, STATUS, LIMITS)


def failure(script: str) -> ScriptFailure:
    with pytest.raises(ScriptFailure) as info:
        run(script)
    return info.value


# --- what scripts can do -------------------------------------------------------------------


def test_result_is_returned_as_text_and_data_as_json() -> None:
    assert run("result = 'plain text'") == "plain text"
    assert run("result = {'a': [1, 2]}") == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert run("print('x', 1)\nprint('y')") == "x 1\ny\n"
    assert run("x = 1") == ""


def test_status_is_a_fresh_copy_each_call() -> None:
    script = "s = status()\ns['instance_id'] = 'changed'\nresult = status()['instance_id']"
    assert run(script) == "node-1"
    assert run("result = status()['data_path']['l1']['used_bytes'] * 2") == "84"


def test_allowed_modules_work() -> None:
    script = (
        "import json\nimport math as m\nfrom collections import Counter\n"
        "result = json.dumps([m.floor(2.5), Counter('aab')['a']])"
    )
    assert run(script) == "[2, 2]"
    assert run("def f(x):\n    return x * 2\nresult = [f(i) for i in range(3)]").count("\n") == 4


# --- escape attempts: rejected before running (400) ----------------------------------------------

REJECTED = [
    ("().__class__.__base__.__subclasses__()", "'__subclasses__'"),
    ("x = ().__class__", "'__class__'"),
    ("x = [].__class__.__mro__", "'__mro__'"),
    ("x = print.__self__", "'__self__'"),
    ("x = status.__globals__", "'__globals__'"),
    ("x = status.__closure__", "'__closure__'"),
    ("x = __builtins__", "'__builtins__'"),
    ("x = __import__('os')", "'__import__'"),
    ("x = _sandbox_getattr_", "'_sandbox_getattr_'"),
    ("import os", "import of 'os' is not allowed"),
    ("import subprocess", "import of 'subprocess' is not allowed"),
    ("from os import path", "import of 'os' is not allowed"),
    ("import json.decoder as d", "import of 'json.decoder' is not allowed"),
    ("from json import *", "'import *' is not allowed"),
    ("from . import x", "relative imports"),
    ("from json import _default_encoder", "'_default_encoder'"),
    ("result = '{0.__class__}'.format(1)", "attribute 'format'"),
    ("f = str.format", "attribute 'format'"),
    ("result = '{x}'.format_map({'x': 1})", "attribute 'format_map'"),
    ("result = f'{status.__globals__}'", "'__globals__'"),
    ("g = (i for i in [1])\nx = g.gi_frame", "'gi_frame'"),
    ("x = g.f_globals", "'f_globals'"),
    ("x = status.gi_code", "'gi_code'"),
    ("x = int.mro()", "attribute 'mro'"),
    (
        "try:\n    1 / 0\nexcept Exception as e:\n    x = e.__traceback__",
        "'__traceback__'",
    ),
    ("x = e.tb_frame", "'tb_frame'"),
    ("class A:\n    pass", "class definitions"),
    ("def gen():\n    yield 1", "generator functions"),
    ("async def f():\n    pass", "async functions"),
    ("match 1:\n    case object(__class__=c):\n        pass", "match statements"),
    ("json.dumps = None", "assigning or deleting attributes"),
    ("del status.x", "assigning or deleting attributes"),
    ("def f(__x):\n    return 1", "'__x'"),
    ("try:\n    pass\nexcept Exception as __e:\n    pass", "'__e'"),
    ("global x", "global statements"),
    ("result = (", "syntax error"),
]


@pytest.mark.parametrize(("script", "needle"), REJECTED, ids=[s for s, _ in REJECTED])
def test_escape_attempts_are_rejected_before_running(script: str, needle: str) -> None:
    error = failure(script)
    assert error.status_code == 400, error
    assert needle in str(error)


def test_the_checker_rejects_without_a_process() -> None:
    with pytest.raises(ValueError, match="'__class__'"):
        check_script("x = ().__class__", ALLOWED)
    with pytest.raises(ValueError, match="longer than"):
        check_script("x = 1\n" * 20_000, ALLOWED)


# --- escape attempts: refused while running (422) -----------------------------------------------

REFUSED = [
    ("result = open('/etc/hostname').read()", "NameError: name 'open' is not defined"),
    ("eval('1')", "name 'eval' is not defined"),
    ("exec('x = 1')", "name 'exec' is not defined"),
    ("compile('1', 'x', 'eval')", "name 'compile' is not defined"),
    ("getattr(1, 'real')", "name 'getattr' is not defined"),
    ("type(1)", "name 'type' is not defined"),
    ("globals()", "name 'globals' is not defined"),
    ("vars()", "name 'vars' is not defined"),
    ("locals()", "name 'locals' is not defined"),
    ("breakpoint()", "name 'breakpoint' is not defined"),
    ("input()", "name 'input' is not defined"),
    ("object()", "name 'object' is not defined"),
    ("import json\nx = json.decoder", "json.decoder is a module"),
    ("import json\nx = json.decoder.re", "json.decoder is a module"),
    ("from json import decoder", "json.decoder is a module"),
    ("from json import scanner", "json.scanner is a module"),
    ("import collections\nx = collections.abc", "collections.abc is a module"),
    ("import math\nx = math.nosuch", "module 'math' has no attribute 'nosuch'"),
    ("1 / 0", "ZeroDivisionError: division by zero (line 1)"),
    ("x = 1\ny = [][3]", "IndexError: list index out of range (line 2)"),
]


@pytest.mark.parametrize(("script", "needle"), REFUSED, ids=[s for s, _ in REFUSED])
def test_escape_attempts_fail_at_run_time(script: str, needle: str) -> None:
    error = failure(script)
    assert error.status_code == 422, error
    assert needle in str(error)


def test_a_module_value_is_never_handed_out(tmp_path: Path) -> None:
    # However a script reaches it, a module object is refused, so `os` stays out of reach.
    for script in (
        "import json\nx = [json.decoder][0]",
        "import collections\nresult = [collections.abc]",
        "import json\nresult = json.decoder.re.os.listdir('/')",
    ):
        error = failure(script)
        assert "is a module" in str(error), script


def test_the_process_cannot_open_files_even_through_an_allowed_module(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("sentinel-" + uuid.uuid4().hex)
    # json.load reads from a file object it is given; the script has no way to get one,
    # and the sandbox process could not open one: it may not create file descriptors.
    error = failure(f"import json\nresult = json.load({str(secret)!r})")
    assert "sentinel" not in str(error)
    assert not list(tmp_path.glob("*.out"))


def test_the_sandbox_sees_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_HTTP_ADMIN_TOKEN", "sentinel-token-" + uuid.uuid4().hex)
    # No script reaches os.environ; the process is started with an empty environment anyway.
    error = failure("import json\nresult = json.decoder.re.os.environ")
    assert "sentinel-token" not in str(error)


# --- limits -----------------------------------------------------------------------------------


def test_an_infinite_loop_is_stopped_at_the_time_limit() -> None:
    error = failure("while True:\n    pass")
    assert error.status_code == 422
    assert "time limit of 3 s" in str(error)


def test_a_long_computation_in_c_is_stopped_too() -> None:
    error = failure("result = 2 ** (10 ** 10)")
    assert error.status_code == 422
    assert "limit" in str(error)


def test_memory_is_bounded() -> None:
    error = failure("x = 'a' * (1 << 30)")
    assert error.status_code == 422
    assert "memory limit" in str(error)


def test_output_is_bounded() -> None:
    assert "larger than 65536 bytes" in str(failure("result = 'x' * 70000"))
    assert "output limit" in str(failure("while True:\n    print('x' * 1000)"))
    # A bare except cannot swallow the output limit.
    script = "for i in range(1000):\n    try:\n        print('x' * 1000)\n    except:\n        pass"
    assert "output limit" in str(failure(script))


def test_deep_recursion_is_an_error_not_a_crash() -> None:
    error = failure("def f(n):\n    return f(n + 1)\nf(0)")
    assert "RecursionError" in str(error)


# --- --script-allowed-imports at start-up -------------------------------------------------------


def test_dangerous_or_missing_modules_cannot_be_allowed() -> None:
    assert import_problems(["json", "math"]) == []
    for name in ("os", "os.path", "sys", "subprocess", "operator", "importlib", "ctypes", "_io"):
        [problem] = import_problems([name])
        assert "never importable by scripts" in problem, name
    [problem] = import_problems(["no_such_module_" + uuid.uuid4().hex])
    assert "cannot be imported" in problem


# --- the endpoint ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def script_server() -> Iterator[AdminServer]:
    with admin_server("--run-script-api-enabled", "--script-allowed-imports", "json") as server:
        yield server


def post_script(server: AdminServer, script: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/run_script", files={"script": ("s.py", script)}, timeout=30)


def test_endpoint_runs_a_script_with_status(script_server: AdminServer) -> None:
    live = httpx.get(f"{script_server.url}/status").json()
    instance = live["instance_id"]
    response = post_script(
        script_server, b"import json\nresult = json.dumps(status()['instance_id'])"
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == f'"{instance}"'
    capacity = post_script(script_server, b"result = status()['data_path']['l1']['capacity_bytes']")
    assert int(capacity.text) == live["data_path"]["l1"]["capacity_bytes"]


def test_endpoint_errors(script_server: AdminServer) -> None:
    rejected = post_script(script_server, b"import os")
    assert rejected.status_code == 400
    assert rejected.json()["detail"].startswith("script rejected: line 1: import of 'os'")
    failed = post_script(script_server, b"open('/etc/passwd')")
    assert failed.status_code == 422
    assert "NameError" in failed.json()["detail"]
    assert post_script(script_server, "x = 'é'".encode("latin-1")).status_code == 400
    no_field = httpx.post(
        f"{script_server.url}/run_script", files={"code": ("s.py", b"x = 1")}, timeout=10
    )
    assert no_field.status_code == 400
    assert "no field named 'script'" in no_field.json()["detail"]
    raw = httpx.post(f"{script_server.url}/run_script", content=b"result = 1", timeout=10)
    assert raw.status_code == 400
    assert "multipart/form-data" in raw.json()["detail"]
    huge = post_script(script_server, b"x = 1\n" * 60_000)
    assert huge.status_code == 413
    assert httpx.get(f"{script_server.url}/healthcheck").status_code == 200


def test_one_script_at_a_time(script_server: AdminServer) -> None:
    slow: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: slow.append(post_script(script_server, b"while True:\n    pass"))
    )
    thread.start()
    try:
        time.sleep(1.0)  # the endless script holds the slot by now (its limit is 5 s)
        busy = post_script(script_server, b"result = 1")
        assert busy.status_code == 429
        assert "another script is running" in busy.json()["detail"]
    finally:
        thread.join()
    assert slow[0].status_code == 422
    assert "time limit of 5 s" in slow[0].json()["detail"]
    assert post_script(script_server, b"result = 1").text == "1"


def test_enabling_scripts_without_a_token_is_warned_about(script_server: AdminServer) -> None:
    warnings = httpx.get(f"{script_server.url}/status").json()["startup"]["warnings"]
    assert any("--run-script-api-enabled without --http-admin-token" in w for w in warnings)


def test_no_sandbox_process_is_left_behind(script_server: AdminServer) -> None:
    post_script(script_server, b"while True:\n    pass")
    leftovers = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"script_sandbox.py" in cmdline:
                leftovers.append(pid)
    assert leftovers == []
