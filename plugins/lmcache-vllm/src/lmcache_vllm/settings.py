"""The connector's options: the ``lmcache.mp.*`` keys of vLLM's ``kv_connector_extra_config``.

The keys, their defaults and meanings are upstream's (the ``LMCacheMPConnector`` that vLLM
ships resolves to upstream LMCache's class), so one ``--kv-transfer-config`` works with
either connector. Keys that upstream accepts but this connector does not implement are
refused when set to anything but their default value, never silently ignored; unknown
``lmcache.mp.*`` keys are warned about by name (a typo would otherwise go unnoticed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

logger = logging.getLogger(__name__)

PREFIX = "lmcache.mp."
TRANSFER_MODE_ENV = "LMCACHE_MP_TRANSFER_MODE"


class TransferMode(StrEnum):
    """Who copies the KV bytes.

    Attributes:
        AUTO: ``lmcache_driven`` when the KV cache is on a CUDA device, ``engine_driven``
            on a CPU host (upstream's rule).
        ENGINE_DRIVEN: The worker copies between its KV blocks and the server's L1 pool
            (PREPARE/COMMIT operations).
        LMCACHE_DRIVEN: The server copies from the registered KV cache itself
            (STORE/RETRIEVE operations; CPU KV tensors in shared memory, or CUDA IPC).
    """

    AUTO = "auto"
    ENGINE_DRIVEN = "engine_driven"
    LMCACHE_DRIVEN = "lmcache_driven"


# Upstream keys this connector does not implement: refused unless left at the default.
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "lazy_offload": False,
    "transfer_intermediate_tensors": False,
    "isolated_ipc": False,
}


class SettingsError(ValueError):
    """A ``lmcache.mp.*`` value is invalid or asks for something not implemented."""


@dataclass(frozen=True)
class ConnectorSettings:
    """Parsed ``lmcache.mp.*`` options.

    Attributes:
        server_url: The server's ZeroMQ endpoint (``tcp://host:port``).
        mq_timeout: Seconds a blocking start-up call (chunk size, registration) waits;
            no answer raises :class:`ConnectionError`.
        heartbeat_interval: Seconds between liveness pings; a ping also times out after
            this long, so a dead server is noticed within about two intervals.
        lookup_timeout: Seconds a request's prefix lookup may take before the request is
            scheduled as a miss (upstream waits up to ``mq_timeout``, 300 s).
        transfer_timeout: Seconds one worker transfer call may take before the load is
            reported failed (vLLM then follows ``kv_load_failure_policy``) or the store
            dropped; the server is then treated as unhealthy until a ping succeeds.
        transfer_mode: The requested transfer mode.
        save_decode_cache: Also store chunks completed during decoding (default: only
            prompt chunks).
        eager_prefetch: Start the lookup when vLLM first sees the request (its
            ``on_new_request`` hook) rather than at the first scheduling attempt.
        nonblocking_lookup_status: Accepted for compatibility; lookups here are always
            non-blocking.
    """

    server_url: str = "tcp://localhost:5555"
    mq_timeout: float = 300.0
    heartbeat_interval: float = 10.0
    lookup_timeout: float = 10.0
    transfer_timeout: float = 30.0
    transfer_mode: TransferMode = TransferMode.AUTO
    save_decode_cache: bool = False
    eager_prefetch: bool = False
    nonblocking_lookup_status: bool = True

    @classmethod
    def from_extra_config(
        cls, extra: Mapping[str, Any] | None, env: Mapping[str, str] | None = None
    ) -> ConnectorSettings:
        """Parse vLLM's ``kv_connector_extra_config``.

        Args:
            extra: The extra config (keys other than ``lmcache.mp.*`` are not ours and are
                left alone).
            env: The environment, for ``LMCACHE_MP_TRANSFER_MODE`` (default ``os.environ``).

        Raises:
            SettingsError: A value of the wrong type or range, or an unimplemented option
                set to a non-default value. The message names the key.
        """
        extra = dict(extra or {})
        env = os.environ if env is None else env
        ours = {k[len(PREFIX) :]: v for k, v in extra.items() if k.startswith(PREFIX)}
        known = {
            "host",
            "port",
            "server_urls",
            "mq_timeout",
            "heartbeat_interval",
            "lookup_timeout",
            "transfer_timeout",
            "mp_transfer_mode",
            "save_decode_cache",
            "eager_prefetch",
            "nonblocking_lookup_status",
            *_UNSUPPORTED_DEFAULTS,
        }
        for name in sorted(set(ours) - known):
            logger.warning("unknown kv_connector_extra_config key %r is ignored", PREFIX + name)
        for name, default in _UNSUPPORTED_DEFAULTS.items():
            if name in ours and ours[name] != default:
                raise SettingsError(
                    f"{PREFIX}{name}={ours[name]!r} is not supported by lmcache_vllm's connector "
                    f"(only {default!r}); use upstream's LMCacheMPConnector for it"
                )
        mode_raw = ours.get("mp_transfer_mode", env.get(TRANSFER_MODE_ENV, "auto"))
        try:
            mode = TransferMode(str(mode_raw).lower())
        except ValueError:
            raise SettingsError(
                f"{PREFIX}mp_transfer_mode must be one of auto, engine_driven, lmcache_driven; "
                f"got {mode_raw!r}"
            ) from None
        heartbeat = _positive(ours, "heartbeat_interval", 10.0)
        return cls(
            server_url=_server_url(ours),
            mq_timeout=_positive(ours, "mq_timeout", 300.0),
            heartbeat_interval=heartbeat,
            lookup_timeout=_positive(ours, "lookup_timeout", 10.0),
            transfer_timeout=_positive(ours, "transfer_timeout", 30.0),
            transfer_mode=mode,
            save_decode_cache=_flag(ours, "save_decode_cache", False),
            eager_prefetch=_flag(ours, "eager_prefetch", False),
            nonblocking_lookup_status=_flag(ours, "nonblocking_lookup_status", True),
        )


def _server_url(ours: Mapping[str, Any]) -> str:
    """``server_urls`` (one entry) wins over ``host`` + ``port``, as upstream's does."""
    urls = ours.get("server_urls")
    if urls is not None:
        items = [u.strip() for u in urls.split(",")] if isinstance(urls, str) else list(urls)
        items = [u for u in items if u]
        if len(items) != 1:
            raise SettingsError(
                f"{PREFIX}server_urls names {len(items)} servers; lmcache_vllm's connector talks "
                "to exactly one (several servers are not implemented)"
            )
        url = str(items[0])
        return url if "://" in url else f"tcp://{url}"
    host = str(ours.get("host", "tcp://localhost"))
    if "://" not in host:
        host = f"tcp://{host}"
    port = ours.get("port", 5555)
    if isinstance(port, bool) or not isinstance(port, int | str):
        raise SettingsError(f"{PREFIX}port must be an integer, got {port!r}")
    try:
        number = int(port)
    except ValueError:
        raise SettingsError(f"{PREFIX}port must be an integer, got {port!r}") from None
    if not 0 < number < 65536:
        raise SettingsError(f"{PREFIX}port must be in 1..65535, got {number}")
    return f"{host}:{number}"


def _positive(ours: Mapping[str, Any], name: str, default: float) -> float:
    value = ours.get(name, default)
    if isinstance(value, bool):
        raise SettingsError(f"{PREFIX}{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{PREFIX}{name} must be a number, got {value!r}") from None
    if not number > 0:
        raise SettingsError(f"{PREFIX}{name} must be > 0, got {value!r}")
    return number


def _flag(ours: Mapping[str, Any], name: str, default: bool) -> bool:
    value = ours.get(name, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise SettingsError(f"{PREFIX}{name} must be a boolean, got {value!r}")
