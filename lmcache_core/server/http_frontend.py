"""The HTTP frontend as a server component: uvicorn on its own thread.

uvicorn runs off the main thread so that the main thread owns SIGINT/SIGTERM and
can stop every component in order, within a bounded time.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from lmcache_core.errors import StartupError
from lmcache_core.lifecycle import Health

logger = logging.getLogger("lmcache.http")

START_TIMEOUT_SECONDS = 15.0


class HttpFrontend:
    """Serves a FastAPI app on ``host:port`` until stopped.

    The frontend is one of the components the app reports on (``/healthcheck``
    lists it), so it exists before the app: :meth:`mount` hands it the app, once,
    before the lifecycle starts it.

    Args:
        host: ``--http-host``.
        port: ``--http-port``.
    """

    name = "http"

    def __init__(self, host: str, port: int) -> None:
        self.app: FastAPI | None = None
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._crash: BaseException | None = None

    def mount(self, app: FastAPI) -> None:
        """Serve ``app``; called once, before :meth:`start`."""
        if self.app is not None:
            raise RuntimeError("the HTTP frontend already has an app")
        self.app = app

    def _bind(self) -> socket.socket:
        # Binding here, not inside uvicorn, turns "address in use" into one clear line.
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise StartupError(
                f"--http-host: cannot resolve {self.host!r}: {exc.strerror}"
            ) from None
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise StartupError(
                f"--http-port: cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        return sock

    def start(self) -> None:
        """Bind, start serving on a thread, and wait until uvicorn is ready."""
        if self.app is None:
            raise StartupError("the HTTP frontend has no app to serve")
        sock = self._bind()
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=logger.isEnabledFor(logging.DEBUG),
            timeout_graceful_shutdown=2,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name="lmcache-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise StartupError(
                    f"HTTP frontend did not start on {self.host}:{self.port}: {self._crash}"
                )
            time.sleep(0.01)
        logger.info("HTTP frontend listening on http://%s:%d", self.host, self.port)

    def _run(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            self._server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - reported through health and start()
            self._crash = exc
            logger.error("HTTP frontend stopped: %r", exc)
        finally:
            sock.close()

    def stop(self, timeout: float) -> None:
        """Ask uvicorn to exit and wait for its thread."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(0.5)

    def health(self) -> Health:
        """Healthy while the serving thread runs."""
        alive = self._thread is not None and self._thread.is_alive()
        return Health(alive, "serving" if alive else f"stopped: {self._crash!r}")
