"""Configuration of the ``fault_inject`` L2 adapter (a wrapper that fails loads on purpose)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StrictInt, field_validator, model_validator

from lmcache_core.config.l2_adapter import L2AdapterConfigBase

TIER_KEYS = ("eviction", "serde")
"""Keys of the inner spec the core applies around the adapter, not the adapter itself:
they are moved up to this wrapper, where the L2 tier reads them."""

INNER_ONLY_KEYS = ("persist_enabled", "shared", "format")
"""Keys the inner adapter implements itself: given on the wrapper they would do nothing."""


class FaultInjectConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "fault_inject", "inner": {...}, ...}``.

    The ``inner`` object is a whole adapter spec of its own, validated against its
    type's model when the adapter is built. As upstream, the inner spec keeps its
    ``eviction`` and ``serde`` keys: they are moved up to this wrapper (where the L2
    tier applies them, to the wrapped adapter's objects), and giving them in both
    places is an error. ``persist_enabled``, ``shared`` and ``format`` belong to the
    inner spec only.
    """

    inner: dict[str, Any] = Field(
        description=(
            'The wrapped adapter\'s own spec, with its "type" (required), e.g. '
            '{"type": "fs", "base_path": "/tmp/l2"}.'
        )
    )
    rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description=(
            "Fraction of keys whose load fails, chosen by a hash of the seed and the key "
            "(the same keys as upstream's for the same seed)."
        ),
    )
    seed: StrictInt = Field(default=0, description="Seed of the per-key failure choice.")
    gap_indices: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        description="Positions in each load batch (0: its first key) whose load always fails.",
    )
    gap_tail_ratios: list[Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]] = Field(
        default_factory=list,
        description=(
            "Positions in each load batch of n keys that always fail, as "
            "round((1 - ratio) * (n - 1)): 0 is the last key, 0.5 the middle, 1 the first."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _lift_tier_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        misplaced = [key for key in INNER_ONLY_KEYS if key in data]
        if misplaced:
            raise ValueError(
                f"{misplaced[0]} belongs in the inner adapter spec; the wrapper has no storage"
            )
        inner = data.get("inner")
        if not isinstance(inner, dict):
            return data
        data = dict(data)
        inner = dict(inner)
        for key in TIER_KEYS:
            if key not in inner:
                continue
            if data.get(key) is not None:
                raise ValueError(f"{key} is given both in the inner spec and on the wrapper")
            data[key] = inner.pop(key)
        data["inner"] = inner
        return data

    @field_validator("inner")
    @classmethod
    def _inner_has_a_type(cls, value: dict[str, Any]) -> dict[str, Any]:
        kind = value.get("type")
        if not isinstance(kind, str) or not kind:
            raise ValueError('the inner adapter spec needs a string "type"')
        return value
