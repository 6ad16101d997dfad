"""The Lookup Hash Logging flag group, declared by the plugin that reads it.

Only this module is imported to compose the server's flags.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import Field

from lmcache_core.config.base import CliMeta
from lmcache_core.config.plugin_settings import PluginSettings

if TYPE_CHECKING:
    from lmcache_core.config.server import ServerConfig


class LookupHashLogSettings(PluginSettings):
    """Rotating JSONL files of the chunk hashes computed by lookups."""

    group: ClassVar[str] = "lookup_hash_log"
    after: ClassVar[str] = "mp"  # the reference lists it right after MP Server
    panel: ClassVar[str] = "Lookup Hash Logging"
    source: ClassVar[str] = "lmcache/v1/mp_observability/subscribers/logging/lookup_hash.py"
    summary: ClassVar[str] = (
        "When enabled, chunk hashes computed during lookup() are published as MP_LOOKUP events "
        "and written to rotating JSONL files. Disabled by default. Part of the Observability "
        "group."
    )

    lookup_hash_log_dir: Annotated[str, CliMeta(metavar="DIR", default_text='"" (disabled)')] = (
        Field(
            default="",
            description="Directory to write lookup hash JSONL files. An empty string disables it.",
        )
    )
    lookup_hash_log_rotation_interval: float = Field(
        default=21600.0, gt=0, description="Seconds before rotating to a new log file (6 h)."
    )
    lookup_hash_log_rotation_max_size: int = Field(
        default=104857600,
        ge=1,
        description="Maximum file size in bytes before rotating early (100 MB).",
    )
    lookup_hash_log_max_files: int = Field(
        default=100, ge=1, description="Maximum number of log files kept; the oldest are deleted."
    )

    def advisories(self, config: ServerConfig) -> list[str]:
        """A log directory is useless while the event bus is off."""
        if self.lookup_hash_log_dir and config.observability.disable_observability:
            return [
                "--disable-observability turns off the event bus, so the lookup-hash log is off too"
            ]
        return []


def lookup_hash_log_enabled(config: ServerConfig) -> bool:
    """Whether the server configuration asks for the lookup-hash log.

    Args:
        config: The server configuration.

    Returns:
        True when ``--lookup-hash-log-dir`` is set (an empty directory means off).
    """
    return bool(config.plugin_settings(LookupHashLogSettings).lookup_hash_log_dir)
