"""One runtime plugin's process: launch, output forwarding, restart policy, termination.

A plugin that exits with 0 has finished and is left alone. One that exits
otherwise (a non-zero code or a signal) is restarted after an exponential
back-off, unless it was already restarted :data:`MAX_RESTARTS` times within the
last :data:`RESTART_WINDOW_SECONDS`; then it is marked ``failed`` and the server
carries on without it. Whatever a run left in its process group is terminated
when the run's main process exits.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import IO, Any, Literal

from lmcache_core.errors import StartupError
from lmcache_core.runtime_plugins.discovery import RuntimePluginScript
from lmcache_core.runtime_plugins.process_group import (
    group_alive,
    group_members,
    kill_group,
    reap_orphans,
    signal_group,
)

logger = logging.getLogger("lmcache.runtime_plugins")

OUTPUT_LOGGER_PREFIX = "lmcache.runtime_plugin."
"""Each plugin's output goes to the logger ``lmcache.runtime_plugin.<name>``."""

MAX_RESTARTS = 5
"""Restarts allowed within one window; the next crash marks the plugin failed."""
RESTART_WINDOW_SECONDS = 60.0
"""A crash only counts against the limit for this long, so rare crashes never exhaust it."""
INITIAL_BACKOFF_SECONDS = 0.2
"""Delay before the first restart in a window; doubled for each further one."""
MAX_BACKOFF_SECONDS = 10.0
"""The longest delay before a restart."""
MAX_LINE_BYTES = 4096
"""Longer output lines are cut here (the rest of the line is dropped, the cut marked)."""
LAST_OUTPUT_LINES = 10
"""How many of a plugin's last output lines ``/status`` shows."""
LEFTOVER_GRACE_SECONDS = 1.0
"""After a run's main process exits, the time the rest of its group gets after SIGTERM."""
_POLL_SECONDS = 0.05

PluginState = Literal["running", "restarting", "exited", "failed", "stopped"]


@dataclass(frozen=True)
class RestartPolicy:
    """When a crashed plugin is restarted.

    Attributes:
        max_restarts: Restarts allowed within ``window_seconds``.
        window_seconds: How long a restart counts against the limit.
        initial_backoff_seconds: Delay before the first restart in a window.
        max_backoff_seconds: Cap of the doubling delay.
    """

    max_restarts: int = MAX_RESTARTS
    window_seconds: float = RESTART_WINDOW_SECONDS
    initial_backoff_seconds: float = INITIAL_BACKOFF_SECONDS
    max_backoff_seconds: float = MAX_BACKOFF_SECONDS

    def backoff(self, recent_restarts: int) -> float:
        """The delay before the next restart, after ``recent_restarts`` in the window."""
        return float(
            min(self.max_backoff_seconds, self.initial_backoff_seconds * 2**recent_restarts)
        )


def describe_exit(code: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL`` (``Popen`` reports signals as negatives)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class PluginSupervisor:
    """Runs one plugin script and keeps it running according to a restart policy.

    Args:
        script: What to run.
        env: Its complete environment.
        policy: When to restart it after a crash.
    """

    def __init__(
        self, script: RuntimePluginScript, env: dict[str, str], policy: RestartPolicy
    ) -> None:
        self.script = script
        self._env = env
        self._policy = policy
        self._output = logging.getLogger(OUTPUT_LOGGER_PREFIX + script.name)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        self._groups: set[int] = set()  # process groups that may still have members
        self._recent: deque[float] = deque()
        self._tail: deque[str] = deque(maxlen=LAST_OUTPUT_LINES)
        self._state: PluginState = "running"
        self._restarts = 0
        self._pid: int | None = None
        self._last_exit_code: int | None = None
        self._last_error: str | None = None
        self._started_at: float | None = None

    # --- start ---------------------------------------------------------------

    def launch(self) -> None:
        """Start the first run and the supervising thread.

        Raises:
            StartupError: The process could not be created.
        """
        try:
            self._spawn()
        except OSError as exc:
            raise StartupError(
                f"runtime plugin {self.script.name} ({self.script.path}): cannot run "
                f"{self.script.interpreter[0]}: {exc.strerror or exc}"
            ) from None
        self._thread = threading.Thread(
            target=self._supervise, name=f"lmcache-plugin-{self.script.name}", daemon=True
        )
        self._thread.start()

    def _spawn(self) -> bool:
        """Start one run; ``False`` when stopping has begun (nothing started)."""
        with self._lock:
            if self._stopping.is_set():
                return False
            process = subprocess.Popen(
                self.script.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self._env,
                close_fds=True,
                # Its own session and process group: one killpg reaches grandchildren too.
                start_new_session=True,
            )
            self._process = process
            self._groups.add(process.pid)
            self._pid = process.pid
            self._state = "running"
            self._started_at = time.time()
            self._last_error = None
        assert process.stdout is not None
        self._pump = threading.Thread(
            target=self._forward_output,
            args=(process.stdout,),
            name=f"lmcache-plugin-{self.script.name}-out",
            daemon=True,
        )
        self._pump.start()
        logger.info(
            "runtime plugin %s started (pid %d): %s",
            self.script.name,
            process.pid,
            " ".join(self.script.argv),
        )
        return True

    # --- output --------------------------------------------------------------

    def _forward_output(self, stream: IO[bytes]) -> None:
        try:
            while line := stream.readline(MAX_LINE_BYTES):
                cut = len(line) >= MAX_LINE_BYTES and not line.endswith(b"\n")
                while cut and (rest := stream.readline(MAX_LINE_BYTES)):
                    if rest.endswith(b"\n"):
                        break
                text = line.rstrip(b"\r\n").decode("utf-8", "replace")
                if cut:
                    text += " [line cut]"
                self._tail.append(text)
                self._output.info("%s", text)
        except (OSError, ValueError):
            pass  # the pipe was closed under us at shutdown
        finally:
            stream.close()

    # --- supervision ---------------------------------------------------------

    def _supervise(self) -> None:
        while True:
            process = self._process
            assert process is not None
            code = process.wait()
            with self._lock:
                self._last_exit_code = code
            if self._stopping.is_set():
                self._set_state("stopped")
                return
            self._clean_up_group(process.pid)
            if self._pump is not None:
                self._pump.join(LEFTOVER_GRACE_SECONDS)
            if code == 0:
                logger.info("runtime plugin %s finished (exit code 0)", self.script.name)
                self._set_state("exited")
                return
            if not self._restart(describe_exit(code)):
                return

    def _restart(self, why: str) -> bool:
        """Wait out the back-off and start the next run; ``False`` when giving up."""
        while True:
            now = time.monotonic()
            while self._recent and now - self._recent[0] > self._policy.window_seconds:
                self._recent.popleft()
            if len(self._recent) >= self._policy.max_restarts:
                logger.error(
                    "runtime plugin %s failed (%s) after %d restarts within %g s; "
                    "not restarting it again",
                    self.script.name,
                    why,
                    len(self._recent),
                    self._policy.window_seconds,
                )
                self._set_state("failed")
                return False
            delay = self._policy.backoff(len(self._recent))
            logger.warning(
                "runtime plugin %s crashed (%s); restart %d of %d in %.2f s",
                self.script.name,
                why,
                len(self._recent) + 1,
                self._policy.max_restarts,
                delay,
            )
            self._set_state("restarting")
            if self._stopping.wait(delay):
                self._set_state("stopped")
                return False
            self._recent.append(time.monotonic())
            with self._lock:
                self._restarts += 1
            try:
                if not self._spawn():
                    self._set_state("stopped")
                    return False
                return True
            except OSError as exc:
                why = f"cannot run {self.script.interpreter[0]}: {exc.strerror or exc}"
                with self._lock:
                    self._last_error = why

    def _clean_up_group(self, pgid: int) -> None:
        """Terminate what a finished run left in its group, SIGKILL after a grace period."""
        if group_alive(pgid):
            logger.info(
                "runtime plugin %s left processes behind; terminating them", self.script.name
            )
            signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
            while group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(_POLL_SECONDS)
            kill_group(pgid)
        reap_orphans(pgid)
        if not group_alive(pgid):
            with self._lock:
                self._groups.discard(pgid)

    def _set_state(self, state: PluginState) -> None:
        with self._lock:
            self._state = state

    # --- stop ----------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop restarting and send SIGTERM to every process group of this plugin."""
        with self._lock:
            self._stopping.set()
            groups = sorted(self._groups)
        for pgid in groups:
            signal_group(pgid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL every process group of this plugin that still has members."""
        with self._lock:
            groups = sorted(self._groups)
        for pgid in groups:
            kill_group(pgid)

    def busy(self) -> bool:
        """Whether its thread still runs or one of its groups still has live members."""
        with self._lock:
            groups = sorted(self._groups)
        alive = [pgid for pgid in groups if group_alive(pgid)]
        with self._lock:
            self._groups.difference_update(set(groups) - set(alive))
        return bool(alive) or (self._thread is not None and self._thread.is_alive())

    def leftover_pids(self) -> list[int]:
        """Pids still alive in this plugin's groups (for the shutdown log)."""
        with self._lock:
            groups = sorted(self._groups)
        return [m.pid for pgid in groups for m in group_members(pgid) if m.state != "Z"]

    # --- status --------------------------------------------------------------

    @property
    def state(self) -> PluginState:
        """The plugin's current state."""
        with self._lock:
            return self._state

    def snapshot(self) -> dict[str, Any]:
        """The plugin's row in ``/status``."""
        with self._lock:
            return {
                "name": self.script.name,
                "path": str(self.script.path),
                "interpreter": list(self.script.interpreter),
                "pid": self._pid,
                "state": self._state,
                "restarts": self._restarts,
                "last_exit_code": self._last_exit_code,
                "last_error": self._last_error,
                "started_at": self._started_at,
                "last_output": list(self._tail),
            }
