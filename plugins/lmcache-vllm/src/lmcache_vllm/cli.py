"""``lmcache vllm-config``: the ``--kv-transfer-config`` JSON that loads our connector."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from lmcache_vllm import CONNECTOR_CLASS, CONNECTOR_MODULE


def kv_transfer_config(
    host: str = "127.0.0.1",
    port: int = 5555,
    *,
    transfer_mode: str = "auto",
    failure_policy: str = "recompute",
) -> dict[str, Any]:
    """VLLM's ``kv_transfer_config`` for our connector on ``host:port``.

    ``kv_load_failure_policy`` is ``recompute`` by default: a load that fails (server
    down, chunk evicted) is recomputed, where vLLM's own default ``fail`` fails the request.
    """
    url = host if "://" in host else f"tcp://{host}"
    return {
        "kv_connector": CONNECTOR_CLASS,
        "kv_connector_module_path": CONNECTOR_MODULE,
        "kv_role": "kv_both",
        "kv_load_failure_policy": failure_policy,
        "kv_connector_extra_config": {
            "lmcache.mp.host": url,
            "lmcache.mp.port": port,
            "lmcache.mp.mp_transfer_mode": transfer_mode,
        },
    }


def vllm_config_command(
    host: Annotated[str, typer.Option(help="The server's ZeroMQ host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The server's ZeroMQ port (--port).")] = 5555,
    transfer_mode: Annotated[
        str, typer.Option(help="auto, engine_driven or lmcache_driven.")
    ] = "auto",
    failure_policy: Annotated[
        str, typer.Option(help="vLLM's kv_load_failure_policy: recompute or fail.")
    ] = "recompute",
) -> None:
    """Print the --kv-transfer-config JSON that loads lmcache_vllm's connector."""
    if transfer_mode not in ("auto", "engine_driven", "lmcache_driven"):
        raise typer.BadParameter(f"unknown transfer mode {transfer_mode!r}")
    if failure_policy not in ("recompute", "fail"):
        raise typer.BadParameter(f"unknown failure policy {failure_policy!r}")
    config = kv_transfer_config(
        host, port, transfer_mode=transfer_mode, failure_policy=failure_policy
    )
    typer.echo(json.dumps(config))
