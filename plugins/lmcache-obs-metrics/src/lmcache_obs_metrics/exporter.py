"""The ``--prometheus-port`` endpoint: a small HTTP server on its own thread.

It answers every path with the registry's exposition (like the Prometheus
client's own exporter), bound to ``--http-host``, so it is as reachable as the
admin API and no more. One thread serves one request at a time, each with a
socket timeout, so a slow or stuck scraper costs neither threads nor memory.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from lmcache_core.errors import StartupError

logger = logging.getLogger("lmcache.observability.metrics")

REQUEST_TIMEOUT_SECONDS = 5.0
"""A scraper that sends nothing for this long is disconnected."""


class PortInUse(StartupError):
    """The Prometheus port is taken by another process (``EADDRINUSE``)."""


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape (Prometheus scrapes every few seconds)."""

    timeout = REQUEST_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        """Drop the access log."""


def _server_class(host: str, port: int) -> type[WSGIServer]:
    """A single-threaded WSGI server class of the address family ``host`` resolves to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StartupError(
            f"--prometheus-port: cannot resolve --http-host {host!r}: {exc.strerror}"
        ) from None

    class _Server(WSGIServer):
        address_family = infos[0][0]

    return _Server


class PrometheusExporter:
    """Serves one registry on ``host:port`` until stopped.

    Args:
        registry: What to expose.
        host: ``--http-host``.
        port: ``--prometheus-port``.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve on a thread.

        Raises:
            PortInUse: Another process listens on the port.
            StartupError: The address is not local or cannot be resolved.
        """
        server_class = _server_class(self.host, self.port)
        try:
            server = make_server(
                self.host,
                self.port,
                make_wsgi_app(self.registry),
                server_class=server_class,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            error = PortInUse if exc.errno == errno.EADDRINUSE else StartupError
            raise error(
                f"--prometheus-port: cannot listen on {self.host}:{self.port}: "
                f"{exc.strerror or exc} (use another --prometheus-port, or --disable-metrics)"
            ) from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="lmcache-prometheus",
            daemon=True,
        )
        self._thread.start()
        logger.info("Prometheus metrics on http://%s:%d/metrics", self.host, self.port)

    @property
    def running(self) -> bool:
        """Whether the serving thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
