"""The default engine's own flags: the worker-reaping budgets (in the MP Server panel).

Only this module is imported to compose the server's flags; torch and the engine
load when the engine is built.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from lmcache_core.config.plugin_settings import PluginSettings

MIN_REAP_TIMEOUT_SECONDS = 30.0
"""A non-zero reap timeout below this would reap live workers between heartbeats."""


class DefaultEngineSettings(PluginSettings):
    """How long a silent worker keeps its KV cache registration."""

    group: ClassVar[str] = "mp"
    after: ClassVar[str] = "shm_name"  # the reference's order

    worker_reap_timeout_seconds: float = Field(
        default=120.0,
        ge=0.0,
        description=(
            "Silence budget after which a worker that has pinged but gone quiet has its KV "
            "cache registration reaped. 0 disables reaping; otherwise at least 30 s."
        ),
    )
    worker_registration_grace_seconds: float = Field(
        default=3600.0,
        ge=0.0,
        description=(
            "Silence budget for a worker that registered but never pinged. Must be >= "
            "--worker-reap-timeout-seconds."
        ),
    )

    def reap_budgets(self) -> tuple[float, float]:
        """``(reap timeout, registration grace)``, as :class:`Liveness` takes them."""
        return self.worker_reap_timeout_seconds, self.worker_registration_grace_seconds

    @field_validator("worker_reap_timeout_seconds")
    @classmethod
    def _check_reap_timeout(cls, value: float) -> float:
        if 0 < value < MIN_REAP_TIMEOUT_SECONDS:
            raise ValueError(
                f"must be 0 (reaping disabled) or at least {MIN_REAP_TIMEOUT_SECONDS:g} seconds, "
                "so a few missed heartbeats never reap a live worker"
            )
        return value

    @model_validator(mode="after")
    def _check_grace(self) -> DefaultEngineSettings:
        if self.worker_registration_grace_seconds < self.worker_reap_timeout_seconds:
            raise ValueError(
                f"--worker-registration-grace-seconds ({self.worker_registration_grace_seconds:g}) "
                f"must be >= --worker-reap-timeout-seconds ({self.worker_reap_timeout_seconds:g})"
            )
        return self
