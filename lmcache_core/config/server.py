"""The whole server configuration: every flag group, and the rules across groups."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from lmcache_core.config.base import GroupSettings, mask_secrets
from lmcache_core.config.eviction import EvictionConfig
from lmcache_core.config.http import HTTPFrontendConfig
from lmcache_core.config.l1 import GDSL1Config, L1MemoryConfig, L1TTLConfig
from lmcache_core.config.l2 import L2AdaptersConfig, L2PolicyConfig
from lmcache_core.config.mp_server import MPServerConfig
from lmcache_core.config.observability import LookupHashLogConfig, ObservabilityConfig
from lmcache_core.plugin.names import normalize_name

BLEND_ENGINES = frozenset({"blend", "blend_legacy"})


class ServerConfig(BaseModel):
    """The resolved configuration of one ``lmcache server`` process.

    The attributes are the flag groups of the configuration reference, in its
    order; the cross-group rules run after every group validated on its own.
    """

    model_config = ConfigDict(frozen=True)

    mp: MPServerConfig
    lookup_hash_log: LookupHashLogConfig
    http: HTTPFrontendConfig
    l1: L1MemoryConfig
    gds_l1: GDSL1Config
    l1_ttl: L1TTLConfig
    eviction: EvictionConfig
    l2_policies: L2PolicyConfig
    l2_adapters: L2AdaptersConfig
    observability: ObservabilityConfig

    @classmethod
    def groups(cls) -> dict[str, type[GroupSettings]]:
        """Attribute name -> group model, in the reference's order."""
        result: dict[str, type[GroupSettings]] = {}
        for name, info in cls.model_fields.items():
            group = info.annotation
            assert isinstance(group, type) and issubclass(group, GroupSettings)
            result[name] = group
        return result

    @model_validator(mode="after")
    def _check_across_groups(self) -> ServerConfig:
        obs, l1, mp = self.observability, self.l1, self.mp
        if obs.enable_tracing and not obs.otlp_endpoint:
            raise ValueError("--enable-tracing: requires --otlp-endpoint")
        if l1.l1_devdax_path is not None:
            if l1.l1_use_lazy:
                raise ValueError("--l1-devdax-path: requires --no-l1-use-lazy")
            if mp.shm_name != "":
                raise ValueError('--l1-devdax-path: requires --shm-name ""')
            if self.gds_l1.gds_l1_path is not None:
                raise ValueError("--l1-devdax-path: cannot be combined with --gds-l1-path")
        if self.gds_l1.gds_l1_path is not None and self.l2_adapters.l2_adapter:
            raise ValueError(
                "--gds-l1-path: the GDS L1 tier exposes no L1 memory buffer, so it cannot be "
                "combined with --l2-adapter"
            )
        engine = normalize_name(mp.engine_type)
        if engine in BLEND_ENGINES and mp.supported_transfer_mode == "engine_driven":
            raise ValueError(
                f"--engine-type {mp.engine_type}: requires --supported-transfer-mode "
                "lmcache_driven or auto"
            )
        return self

    def advisories(self) -> list[str]:
        """Warnings about settings that are valid but probably not what was meant."""
        notes: list[str] = []
        mp, obs = self.mp, self.observability
        if mp.enable_segmented_prefix and normalize_name(mp.engine_type) != "blend":
            notes.append(
                "--enable-segmented-prefix has no effect unless --engine-type is blend "
                f"(it is {mp.engine_type})"
            )
        if obs.otlp_endpoint and not obs.enable_tracing:
            notes.append("--otlp-endpoint is set but tracing is off (add --enable-tracing)")
        if obs.disable_observability and (
            obs.enable_tracing or self.lookup_hash_log.lookup_hash_log_dir
        ):
            notes.append(
                "--disable-observability turns off the event bus, so tracing and the "
                "lookup-hash log are off too"
            )
        return notes

    def public_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready data, secrets masked."""
        return dict(mask_secrets(self.model_dump(mode="json")))
