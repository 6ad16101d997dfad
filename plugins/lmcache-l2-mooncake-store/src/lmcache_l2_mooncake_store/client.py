"""A typed, checked start-up of Mooncake's Python store client.

Mooncake's ``setup`` retries an unreachable master for more than a minute and
ignores keys it does not know, so :func:`open_store` first checks that the master
(and an ``http`` metadata server) accepts a TCP connection within the configured
timeout, and fails with one line naming the address when it does not.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from lmcache_l2_mooncake_store.config import MooncakeStoreAdapterConfig

INSTALL = "pip install mooncake-transfer-engine-non-cuda==0.3.13.post1 (needs libibverbs1)"
"""How to install the library (the non-CUDA build runs on any Linux x86-64 host)."""

ERROR_NAMES: dict[int, str] = {
    -1: "INTERNAL_ERROR",
    -10: "BUFFER_OVERFLOW",
    -101: "SEGMENT_NOT_FOUND",
    -200: "NO_AVAILABLE_HANDLE",
    -400: "INVALID_KEY",
    -500: "WRITE_FAIL",
    -600: "INVALID_PARAMS",
    -700: "INVALID_WRITE",
    -701: "INVALID_READ",
    -703: "REPLICA_IS_NOT_READY",
    -704: "OBJECT_NOT_FOUND",
    -705: "OBJECT_ALREADY_EXISTS",
    -706: "OBJECT_HAS_LEASE",
    -800: "TRANSFER_FAIL",
    -900: "RPC_FAIL",
}
"""Mooncake's error codes (``mooncake-store/include/types.h``) seen by this adapter."""

OBJECT_NOT_FOUND = -704
OBJECT_HAS_LEASE = -706
TRANSFER_FAIL = -800
RPC_FAIL = -900


class MooncakeUnavailable(RuntimeError):
    """The library is missing, or the cluster cannot be reached at start-up."""


def error_name(code: int) -> str:
    """A Mooncake return code as ``NAME (code)``."""
    return f"{ERROR_NAMES.get(code, 'error')} ({code})"


def check_reachable(host: str, port: int, what: str, timeout_s: float) -> None:
    """Connect to ``host:port`` once, within ``timeout_s``.

    Raises:
        MooncakeUnavailable: No connection, naming ``what`` and the address.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MooncakeUnavailable(
            f"{what} {host}:{port} is not reachable within {timeout_s:g} s ({reason})"
        ) from None


def open_store(config: MooncakeStoreAdapterConfig) -> Any:
    """A ``MooncakeDistributedStore`` set up from ``config``.

    Raises:
        MooncakeUnavailable: The library is not installed, the master or the
            metadata server does not answer, or ``setup`` fails.
    """
    try:
        from mooncake.store import MooncakeDistributedStore
    except ImportError as exc:
        raise MooncakeUnavailable(
            f"mooncake_store needs the Mooncake store library ({INSTALL}): {exc}"
        ) from None
    host, port = config.master()
    check_reachable(host, port, "master_server_addr", config.connect_timeout_s)
    if config.metadata_server.startswith(("http://", "https://")):
        url = urlsplit(config.metadata_server)
        default = 443 if url.scheme == "https" else 80
        check_reachable(
            url.hostname or "", url.port or default, "metadata_server", config.connect_timeout_s
        )
    store = MooncakeDistributedStore()
    code = int(store.setup(config.mooncake_setup()))
    if code != 0:
        raise MooncakeUnavailable(
            f"Mooncake setup with master {config.master_server_addr} failed: {error_name(code)}"
        )
    return store


def replicate_config(replica_num: int) -> Any:
    """Mooncake's ``ReplicateConfig`` asking for ``replica_num`` replicas."""
    from mooncake.store import ReplicateConfig

    replicate = ReplicateConfig()
    replicate.replica_num = replica_num
    return replicate
