"""The runtime plugin launcher: a server component running ``--runtime-plugin-locations``.

Started after the data path and before the HTTP frontend, so it stops after the
frontend and before the data path: a plugin may talk to the server over HTTP
as soon as ``/healthcheck`` answers, and may still do so while it is being
terminated. A failed plugin never fails the server: its health stays ``ok`` and
the failure shows in ``/status`` and the log.
"""

from __future__ import annotations

import atexit
import logging
import time
from collections import Counter
from typing import Any

from lmcache_core.config.server import ServerConfig
from lmcache_core.lifecycle import Health
from lmcache_core.runtime_plugins.discovery import discover
from lmcache_core.runtime_plugins.environment import PluginEnvironment
from lmcache_core.runtime_plugins.process_group import become_child_subreaper
from lmcache_core.runtime_plugins.supervisor import PluginSupervisor, RestartPolicy

logger = logging.getLogger("lmcache.runtime_plugins")

TERMINATE_GRACE_SECONDS = 1.5
"""Between SIGTERM and SIGKILL at shutdown (within the server's 4 s stop budget)."""
_POLL_SECONDS = 0.05


class RuntimePluginLauncher:
    """Launches, supervises and terminates every runtime plugin of one server.

    Args:
        config: The server configuration (locations, extra config, HTTP address).
        policy: When crashed plugins are restarted.
        grace_seconds: How long plugins get to exit after SIGTERM at shutdown.
    """

    name = "runtime_plugins"

    def __init__(
        self,
        config: ServerConfig,
        policy: RestartPolicy | None = None,
        grace_seconds: float = TERMINATE_GRACE_SECONDS,
    ) -> None:
        self._config = config
        self._policy = policy or RestartPolicy()
        self._grace = grace_seconds
        self._supervisors: list[PluginSupervisor] = []

    def start(self) -> None:
        """Find every script, then launch each one.

        Raises:
            StartupError: A location is missing, a script has no usable
                interpreter, or a process cannot be created; plugins already
                launched are terminated first.
        """
        scripts = discover(self._config.mp.runtime_plugin_locations)
        environment = PluginEnvironment(self._config)
        # Orphaned grandchildren then come back to this process, which reaps them.
        if scripts and not become_child_subreaper():
            logger.debug("cannot become a child subreaper; orphans go to init")
        atexit.register(self._kill_now)
        try:
            for script in scripts:
                supervisor = PluginSupervisor(
                    script, environment.for_plugin(script.name), self._policy
                )
                supervisor.launch()
                self._supervisors.append(supervisor)
        except BaseException:
            self.stop(self._grace + 1.0)
            raise
        logger.info("%d runtime plugin(s) launched", len(self._supervisors))

    def stop(self, timeout: float) -> None:
        """SIGTERM every plugin's process group, SIGKILL what is left after the grace period."""
        atexit.unregister(self._kill_now)
        if not self._supervisors:
            return
        started = time.monotonic()
        deadline = started + timeout
        for supervisor in self._supervisors:
            supervisor.request_stop()
        self._wait(started + min(self._grace, timeout * 0.75))
        stubborn = [s for s in self._supervisors if s.busy()]
        for supervisor in stubborn:
            logger.warning(
                "runtime plugin %s did not exit within %.1f s of SIGTERM; killing it",
                supervisor.script.name,
                self._grace,
            )
            supervisor.kill()
        self._wait(deadline)
        for supervisor in self._supervisors:
            if supervisor.busy():
                logger.error(
                    "runtime plugin %s: processes %s still alive after SIGKILL",
                    supervisor.script.name,
                    supervisor.leftover_pids(),
                )
        logger.info("runtime plugins stopped")

    def _wait(self, deadline: float) -> None:
        while any(s.busy() for s in self._supervisors) and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)

    def _kill_now(self) -> None:
        # At interpreter exit without an orderly stop: leave no plugin behind.
        for supervisor in self._supervisors:
            supervisor.request_stop()
            supervisor.kill()

    def health(self) -> Health:
        """Always ``ok`` (a failed plugin never stops the server); the detail counts states."""
        counts = Counter(s.state for s in self._supervisors)
        detail = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no plugins"
        return Health(True, detail)

    def status(self) -> list[dict[str, Any]]:
        """One row per plugin, in launch order (``/status`` ``runtime_plugins``)."""
        return [s.snapshot() for s in self._supervisors]
