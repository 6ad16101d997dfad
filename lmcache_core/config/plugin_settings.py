"""Flags that a plugin declares: the settings model a spec names as its ``config_model``.

A plugin whose code alone reads some flags declares them in a
:class:`PluginSettings` subclass and names that class as the ``config_model`` of
one of its specs (engine, subscriber, HTTP router, ...). The core then composes
the server's flags from its own groups plus the settings models of the installed
plugins (see :mod:`lmcache_core.config.layout`): the plugin's flags appear in
``--help``, the environment mapping, ``--dry-run`` and the generated docs like
the core's, and the plugin reads them back typed with
``config.plugin_settings(MySettings)``. The core never names the fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from lmcache_core.config.base import GroupSettings

if TYPE_CHECKING:
    from lmcache_core.config.server import ServerConfig
    from lmcache_core.plugin.registry import PluginRegistry


class PluginSettings(GroupSettings):
    """Base of a plugin's own flags; read from ``LMCACHE_<FLAG_NAME>`` like every group.

    Class attributes:
        group: The attribute of the ``--dry-run`` ``config`` document the flags
            belong to. When it names a core group (``"mp"``, ``"observability"``)
            the flags join that group and its ``--help`` panel; otherwise they form
            a group of their own, titled by :attr:`panel` (with :attr:`source` and
            :attr:`summary` for the docs).
        after: Where the flags go, so that ``--help`` and the docs keep the
            reference's order. Joining a group: the field they follow (``""``: at
            the end). A group of its own: the group it follows (``""``: last).
            An anchor that is not installed counts as ``""``.
    """

    group: ClassVar[str] = ""
    after: ClassVar[str] = ""

    def check(self, config: ServerConfig) -> None:
        """Rules between these flags and the rest of the configuration.

        Runs once every group validated on its own. Override it to refuse a
        combination; the message starts with the flag it is about, as the core's
        own cross-group rules do.

        Args:
            config: The whole configuration (core groups and every plugin's settings).

        Raises:
            ValueError: The combination is refused.
        """

    def advisories(self, config: ServerConfig) -> list[str]:
        """Warnings about valid settings that are probably not what was meant.

        Args:
            config: The whole configuration.

        Returns:
            One line per warning; none by default.
        """
        return []


def settings_models(registry: PluginRegistry) -> tuple[type[PluginSettings], ...]:
    """The settings models of the plugins in ``registry``, once each, in load order.

    Two specs may share one model (a subscriber and its HTTP route, say): it is
    composed once. Disabled and broken plugins are not loaded, so their flags do
    not exist.
    """
    from lmcache_core.plugin.specs import PluginKind

    models: list[type[PluginSettings]] = []
    for kind in PluginKind:
        for spec in registry.specs(kind):
            model = spec.config_model
            if not (isinstance(model, type) and issubclass(model, PluginSettings)):
                continue  # no model, or an L2 adapter's JSON model
            if model not in models:
                models.append(model)
    return tuple(models)


def installed_settings_models() -> tuple[type[PluginSettings], ...]:
    """The settings models of every installed, enabled plugin.

    Loads the plugins' registration modules (``LMCACHE_DISABLE_PLUGINS`` is
    honoured, so a disabled plugin is never imported).
    """
    from lmcache_core.plugin.registry import PluginRegistry

    return settings_models(PluginRegistry())
