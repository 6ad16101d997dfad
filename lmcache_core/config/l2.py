"""The L2 Policies and L2 Adapters flag groups."""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from lmcache_core.config.base import CliMeta, GroupSettings, parse_json_object


class L2PolicyConfig(GroupSettings):
    """Store and prefetch policies between L1 and the L2 adapters."""

    panel: ClassVar[str] = "L2 Policies"
    source: ClassVar[str] = "lmcache/v1/distributed/config.py"
    summary: ClassVar[str] = "Which adapters receive stores, which serve prefetches, and limits."

    l2_store_policy: Annotated[str, CliMeta(metavar="POLICY")] = Field(
        default="default",
        min_length=1,
        description=(
            "L2 store policy plugin. default: every key to every adapter, L1 keeps it; skip_l1: "
            "every key to every adapter, then deleted from L1 (buffer-only mode)."
        ),
    )
    l2_prefetch_policy: Annotated[str, CliMeta(metavar="POLICY")] = Field(
        default="default",
        min_length=1,
        description=(
            "L2 prefetch policy plugin. default: load from the first adapter that has the key, "
            "the L1 copy is temporary; retain: same plan, the L1 copy is kept."
        ),
    )
    l2_prefetch_max_in_flight: int = Field(
        default=8, ge=1, description="Maximum number of concurrent prefetch (L2 load) requests."
    )
    periodic_notifier_interval_ms: int = Field(
        default=5,
        ge=1,
        description=(
            "Interval in milliseconds of the periodic notifier that wakes the controllers of "
            "L2 adapters without native completion signalling."
        ),
    )


class L2AdaptersConfig(GroupSettings):
    """The cascade of L2 adapters, one JSON object per ``--l2-adapter`` flag.

    Only the JSON syntax and the presence of ``type`` are checked here; each object
    is validated against its adapter plugin's own model when plugins are resolved.
    ``LMCACHE_L2_ADAPTER`` holds one JSON object or a JSON list of them.
    """

    panel: ClassVar[str] = "L2 Adapters"
    source: ClassVar[str] = "lmcache/v1/distributed/l2_adapters/config.py"
    summary: ClassVar[str] = (
        "Repeatable --l2-adapter <JSON>; the JSON's type selects the adapter plugin and the "
        "order of the flags is the cascade order."
    )

    l2_adapter: Annotated[
        list[dict[str, Any]], NoDecode, CliMeta(repeatable=True, metavar="JSON")
    ] = Field(
        default_factory=list,
        description=(
            'An L2 adapter as a JSON object with a "type" field; repeat the flag for a cascade, '
            "in order."
        ),
    )

    @field_validator("l2_adapter", mode="before")
    @classmethod
    def _parse_adapters(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON: {exc.msg} at position {exc.pos}") from None
            if isinstance(value, dict):
                value = [value]
        if not isinstance(value, (list, tuple)):
            return value
        adapters = []
        for index, item in enumerate(value, start=1):
            adapter = parse_json_object(item, f"adapter #{index}")
            if not isinstance(adapter.get("type"), str) or not adapter["type"]:
                raise ValueError(f'adapter #{index} has no "type" field naming the adapter type')
            adapters.append(adapter)
        return adapters
