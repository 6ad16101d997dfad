"""Configuration of the ``dax`` L2 adapter (fixed slots in Device-DAX memory)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmcache_core.config.l2_adapter import L2AdapterConfigBase


class DaxDevice(BaseModel):
    """One device of the ``devices`` list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_path: str = Field(min_length=1, description="The /dev/dax* device or mmap-able file.")
    max_dax_size_gb: float = Field(
        gt=0.0, allow_inf_nan=False, description="GiB of the device to map."
    )


class DaxAdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "dax", ...}``.

    Exactly one of two forms names the memory: a single ``device_path`` with
    ``max_dax_size_gb``, or a ``devices`` list of such pairs.
    """

    slot_bytes: int = Field(gt=0, description="Size of one fixed slot in bytes (required).")
    device_path: str | None = Field(
        default=None, min_length=1, description="Single-device form: the device to map."
    )
    max_dax_size_gb: float | None = Field(
        default=None,
        gt=0.0,
        allow_inf_nan=False,
        description="Single-device form: GiB of device_path to map.",
    )
    devices: list[DaxDevice] | None = Field(
        default=None,
        min_length=1,
        description="Multi-device form: a list of {device_path, max_dax_size_gb} objects.",
    )
    hotplug_enabled: bool = Field(
        default=False,
        description="Hot-plug of devices at run time: not implemented; true is refused at build.",
    )
    num_store_workers: int = Field(default=1, gt=0, description="Store worker threads.")
    num_lookup_workers: int = Field(default=1, gt=0, description="Lookup worker threads.")
    num_load_workers: int | None = Field(
        default=None, gt=0, description="Load worker threads; unset uses min(4, CPU count)."
    )

    @model_validator(mode="after")
    def _one_form(self) -> DaxAdapterConfig:
        single = self.device_path is not None or self.max_dax_size_gb is not None
        if single and self.devices is not None:
            raise ValueError("give either device_path and max_dax_size_gb, or devices, not both")
        if self.devices is not None:
            paths = [device.device_path for device in self.devices]
            duplicates = sorted({path for path in paths if paths.count(path) > 1})
            if duplicates:
                raise ValueError(f"devices lists {', '.join(duplicates)} more than once")
            return self
        if self.device_path is None:
            raise ValueError("give device_path and max_dax_size_gb, or devices")
        if self.max_dax_size_gb is None:
            raise ValueError("device_path needs max_dax_size_gb")
        return self

    def device_list(self) -> list[DaxDevice]:
        """The configured devices, whichever form the JSON used."""
        if self.devices is not None:
            return list(self.devices)
        assert self.device_path is not None and self.max_dax_size_gb is not None
        return [DaxDevice(device_path=self.device_path, max_dax_size_gb=self.max_dax_size_gb)]
