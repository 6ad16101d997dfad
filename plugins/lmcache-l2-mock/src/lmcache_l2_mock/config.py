"""Configuration of the ``mock`` L2 adapter (in-memory, for tests)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from lmcache_core.config.l2_adapter import L2AdapterConfigBase


class MockAdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "mock", ...}``.

    Besides the capacity and bandwidth of the simulated store, it carries
    fault-injection settings that make loads fail on purpose.
    """

    max_size_gb: float = Field(
        gt=0.0,
        allow_inf_nan=False,
        description="Capacity of the in-memory store in GiB (required).",
    )
    mock_bandwidth_gb: float = Field(
        gt=0.0,
        allow_inf_nan=False,
        description=(
            "Simulated bandwidth in GiB/s; completions are delayed by size / bandwidth (required)."
        ),
    )
    failure_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of loaded keys that fail, chosen deterministically from the seed.",
    )
    seed: int = Field(default=0, description="Seed of the deterministic failure choice.")
    fail_chunk_indices: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, description="Positions in each load batch whose load always fails."
    )
    added_latency_ms: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Extra delay in milliseconds added to every completion.",
    )
