"""Entry point of ``lmcache-vllm``: the CLI command ``lmcache vllm-config``."""

from __future__ import annotations

from lmcache_core.plugin import CliCommandSpec, hookimpl
from lmcache_vllm.cli import vllm_config_command


@hookimpl
def lmcache_register_cli_commands() -> list[CliCommandSpec]:
    """Register ``vllm-config``."""
    return [
        CliCommandSpec(
            name="vllm-config",
            factory=lambda: vllm_config_command,
            description="Print vLLM's --kv-transfer-config for lmcache_vllm's connector.",
        )
    ]
