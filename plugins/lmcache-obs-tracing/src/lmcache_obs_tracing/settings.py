"""The tracing subscriber's own flag, ``--otlp-endpoint`` (in the Observability panel).

Only this module is imported to compose the server's flags (``lmcache server
--help`` stays cheap); the OpenTelemetry SDK loads when the subscriber is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import Field

from lmcache_core.config.base import CliMeta
from lmcache_core.config.plugin_settings import PluginSettings

if TYPE_CHECKING:
    from lmcache_core.config.server import ServerConfig


class TracingSettings(PluginSettings):
    """Where the spans go."""

    group: ClassVar[str] = "observability"
    after: ClassVar[str] = "event_bus_queue_size"

    otlp_endpoint: Annotated[str | None, CliMeta(metavar="URL", default_text="none")] = Field(
        default=None,
        min_length=1,
        description="OTLP gRPC endpoint for exporting metrics and traces.",
    )

    def check(self, config: ServerConfig) -> None:
        """``--enable-tracing`` needs somewhere to export to.

        Raises:
            ValueError: Tracing is on and no endpoint is set.
        """
        if config.observability.enable_tracing and not self.otlp_endpoint:
            raise ValueError("--enable-tracing: requires --otlp-endpoint")

    def advisories(self, config: ServerConfig) -> list[str]:
        """An endpoint without ``--enable-tracing`` exports nothing."""
        if self.otlp_endpoint and not config.observability.enable_tracing:
            return ["--otlp-endpoint is set but tracing is off (add --enable-tracing)"]
        return []
