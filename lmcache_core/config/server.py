"""The whole server configuration: every flag group, and the rules across groups."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmcache_core.config.base import GroupSettings, mask_secrets
from lmcache_core.config.eviction import EvictionConfig
from lmcache_core.config.http import HTTPFrontendConfig
from lmcache_core.config.l1 import GDSL1Config, L1MemoryConfig, L1TTLConfig
from lmcache_core.config.l2 import L2AdaptersConfig, L2PolicyConfig
from lmcache_core.config.layout import FlagLayout
from lmcache_core.config.mp_server import MPServerConfig
from lmcache_core.config.observability import ObservabilityConfig
from lmcache_core.config.plugin_settings import PluginSettings
from lmcache_core.plugin.names import normalize_name

BLEND_ENGINES = frozenset({"blend", "blend_legacy"})

S = TypeVar("S", bound=PluginSettings)


class ServerConfig(BaseModel):
    """The resolved configuration of one ``lmcache server`` process.

    The attributes are the core's flag groups of the configuration reference, in
    its order; ``plugins`` holds the validated settings of the installed plugins
    (their flags, see :class:`~lmcache_core.config.plugin_settings.PluginSettings`),
    which a plugin reads with :meth:`plugin_settings`. The cross-group rules run
    after every group validated on its own, the core's first, then each plugin's.
    """

    model_config = ConfigDict(frozen=True)

    mp: MPServerConfig
    http: HTTPFrontendConfig
    l1: L1MemoryConfig
    gds_l1: GDSL1Config
    l1_ttl: L1TTLConfig
    eviction: EvictionConfig
    l2_policies: L2PolicyConfig
    l2_adapters: L2AdaptersConfig
    observability: ObservabilityConfig
    plugins: tuple[PluginSettings, ...] = Field(default=(), exclude=True, repr=False)

    @classmethod
    def groups(cls) -> dict[str, type[GroupSettings]]:
        """Attribute name -> core group model, in the reference's order.

        The plugins' flags are composed in by
        :meth:`~lmcache_core.config.layout.FlagLayout.compose`.
        """
        result: dict[str, type[GroupSettings]] = {}
        for name, info in cls.model_fields.items():
            if name == "plugins":
                continue
            group = info.annotation
            assert isinstance(group, type) and issubclass(group, GroupSettings)
            result[name] = group
        return result

    @model_validator(mode="after")
    def _check_across_groups(self) -> ServerConfig:
        l1, mp = self.l1, self.mp
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
        for settings in self.plugins:
            settings.check(self)
        return self

    def plugin_settings(self, model: type[S]) -> S:
        """The validated settings a plugin declared with ``model``.

        Raises:
            LookupError: ``model`` was not composed into this configuration (its
                plugin is not installed, or is disabled).
        """
        for settings in self.plugins:
            if type(settings) is model:
                return settings
        raise LookupError(
            f"{model.__module__}.{model.__qualname__} is not part of this configuration "
            "(is its plugin installed and enabled?)"
        )

    def advisories(self) -> list[str]:
        """Warnings about settings that are valid but probably not what was meant."""
        notes: list[str] = []
        mp, obs = self.mp, self.observability
        if mp.enable_segmented_prefix and normalize_name(mp.engine_type) != "blend":
            notes.append(
                "--enable-segmented-prefix has no effect unless --engine-type is blend "
                f"(it is {mp.engine_type})"
            )
        if obs.disable_observability and obs.enable_tracing:
            notes.append("--disable-observability turns off the event bus, so tracing is off too")
        for settings in self.plugins:
            notes.extend(settings.advisories(self))
        return notes

    def public_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready data, secrets masked.

        Grouped as ``--help`` groups the flags: a plugin's flags appear in the
        group they join, in their place.
        """
        dumps: dict[type[GroupSettings], dict[str, Any]] = {
            type(group): group.model_dump(mode="json")
            for group in (*(getattr(self, key) for key in self.groups()), *self.plugins)
        }
        layout = FlagLayout.compose(type(settings) for settings in self.plugins)
        document = {
            group.key: {f.name: dumps[f.model][f.name] for f in group.fields}
            for group in layout.groups
        }
        return dict(mask_secrets(document))
