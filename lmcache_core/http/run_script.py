"""``POST /run_script``: run an uploaded script in a restricted, short-lived process.

Off unless ``--run-script-api-enabled``. Each script runs in a fresh
``python -I`` process (:mod:`lmcache_core.http.script_sandbox`) with an empty
environment, so it can see neither the server's objects nor its secrets; its
only view of the server is ``status()``, a copy of ``GET /status`` taken when
the request arrived. One script runs at a time; the next is answered 429.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import PlainTextResponse

from lmcache_core.http import script_sandbox
from lmcache_core.http.cache_objects import read_body
from lmcache_core.http.core_routes import status as status_document
from lmcache_core.state import ServerContext

router = APIRouter()

MAX_BODY_BYTES = 256 * 1024
"""Largest accepted request body (the script plus multipart framing)."""

TIME_LIMIT_S = 5.0
"""Wall-clock seconds a script may run, start-up of its interpreter included."""

MAX_OUTPUT_BYTES = 1 << 20
"""Largest result (or printed text) a script may produce."""

MEMORY_BYTES = 512 << 20
"""Address space a script may add to its interpreter's (imports included before)."""

_SANDBOX_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    # Numeric libraries must not start thread pools: the sandbox may not create threads.
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass(frozen=True)
class ScriptLimits:
    """Bounds of one script run."""

    time_s: float = TIME_LIMIT_S
    output_bytes: int = MAX_OUTPUT_BYTES
    memory_bytes: int = MEMORY_BYTES


class ScriptFailure(Exception):
    """A script could not produce a result; ``status_code`` is the HTTP answer."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


def run_sandboxed(
    script: str, allowed_imports: list[str], status: Any, limits: ScriptLimits
) -> str:
    """Run ``script`` in a fresh sandbox process; returns its result text.

    Raises:
        ScriptFailure: The script was rejected (400), failed, ran out of time,
            memory or output (422), or the sandbox itself broke (500).
    """
    request = json.dumps(
        {
            "script": script,
            "allowed_imports": allowed_imports,
            "status": status,
            "max_output_bytes": limits.output_bytes,
            "memory_bytes": limits.memory_bytes,
            "cpu_seconds": max(1, int(limits.time_s + 1)),
        }
    ).encode()
    process = subprocess.Popen(
        [sys.executable, "-I", script_sandbox.__file__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=_SANDBOX_ENV,
        cwd="/",
        start_new_session=True,  # so the whole group can be killed
    )
    try:
        output, reason = _exchange(process, request, limits)
    finally:
        _kill(process)
    if reason is not None:
        raise ScriptFailure(422, reason)
    try:
        reply = json.loads(output.decode("utf-8", "replace"))
    except ValueError:
        code = process.returncode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            raise ScriptFailure(
                422, f"the script was killed by {name} (CPU time or memory limit)"
            ) from None
        raise ScriptFailure(500, f"the script sandbox failed (exit code {code})") from None
    if reply.get("ok"):
        return str(reply["text"])
    kind = reply.get("kind")
    raise ScriptFailure(400 if kind == "rejected" else 422, str(reply.get("error")))


def _exchange(
    process: subprocess.Popen[bytes], request: bytes, limits: ScriptLimits
) -> tuple[bytes, str | None]:
    """Send the request, read the reply within the limits; (reply, why it was cut short)."""
    assert process.stdin is not None and process.stdout is not None
    deadline = time.monotonic() + limits.time_s
    # JSON escaping at most doubles text written with ensure_ascii=False; plus the envelope.
    cap = 2 * limits.output_bytes + 64 * 1024
    try:
        process.stdin.write(request)
        process.stdin.close()
    except BrokenPipeError:
        return b"", None
    chunks: list[bytes] = []
    size = 0
    fd = process.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return b"", f"the script ran longer than its time limit of {limits.time_s:g} s"
            if not selector.select(left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                process.wait(max(0.1, deadline - time.monotonic()))
                return b"".join(chunks), None
            size += len(chunk)
            if size > cap:
                return b"", f"the script's output exceeded {limits.output_bytes} bytes"
            chunks.append(chunk)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)
    if process.stdout is not None:
        process.stdout.close()


def script_from_multipart(content_type: str, body: bytes) -> str:
    """The text of the ``script`` field of a multipart/form-data body.

    Raises:
        HTTPException: 400 for another content type, a body without the field, or
            a script that is not UTF-8.
    """
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(
            400, "send the script as multipart/form-data with a field named 'script'"
        )
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise HTTPException(400, "malformed multipart/form-data body")
    for part in message.iter_parts():
        disposition = part.get("Content-Disposition", "")
        if getattr(disposition, "params", {}).get("name") != "script":
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            break
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPException(400, "the script is not UTF-8 text") from None
    raise HTTPException(400, "the multipart/form-data body has no field named 'script'")


_one_at_a_time = threading.Lock()


@router.post(
    "/run_script",
    summary="Run a Python script in a restricted sandbox (off unless --run-script-api-enabled)",
    response_class=PlainTextResponse,
)
async def run_script(request: Request) -> PlainTextResponse:
    """The script's ``result`` variable as text (JSON for data), or what it printed.

    Multipart field ``script``. 404 while disabled; 400 for a rejected script;
    413 when too large; 422 when it fails or exceeds its time, memory or output
    limit; 429 while another script runs.
    """
    context: ServerContext = request.app.state.context
    if not context.config.http.run_script_api_enabled:
        raise HTTPException(
            404, "/run_script is disabled: start the server with --run-script-api-enabled"
        )
    body = await read_body(request, MAX_BODY_BYTES)
    script = script_from_multipart(request.headers.get("content-type", ""), body)
    allowed = list(context.config.mp.script_allowed_imports)
    try:
        script_sandbox.check_script(script, allowed)
    except script_sandbox.ScriptRejected as exc:
        raise HTTPException(400, f"script rejected: {exc}") from None
    if not _one_at_a_time.acquire(blocking=False):
        raise HTTPException(429, "another script is running; try again when it has finished")
    try:
        snapshot = jsonable_encoder(status_document(request))
        text = await run_in_threadpool(run_sandboxed, script, allowed, snapshot, ScriptLimits())
    except ScriptFailure as exc:
        prefix = "script rejected" if exc.status_code == 400 else "script failed"
        raise HTTPException(exc.status_code, f"{prefix}: {exc}") from None
    finally:
        _one_at_a_time.release()
    return PlainTextResponse(text)
