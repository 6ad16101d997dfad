"""The server's flags, composed from the core's groups and the installed plugins' settings.

The CLI (``--help`` panels), the loader (which model validates which flag), the
``--dry-run`` document and the generated docs all walk one :class:`FlagLayout`,
so a plugin's flags show up in each of them in the same place. Placement follows
each settings model's ``group`` and ``after`` (see
:class:`~lmcache_core.config.plugin_settings.PluginSettings`); the core names no
plugin field.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydantic.fields import FieldInfo

from lmcache_core.config.base import GroupSettings, flag_name
from lmcache_core.config.plugin_settings import PluginSettings
from lmcache_core.errors import ConfigError


@dataclass(frozen=True)
class FlagField:
    """One flag: its field name, its pydantic field, and the model that declares it."""

    name: str
    info: FieldInfo
    model: type[GroupSettings]


@dataclass(frozen=True)
class FlagGroup:
    """One group of the ``--dry-run`` document, and its ``--help`` panel.

    Attributes:
        key: The attribute of the document (``"mp"``).
        panel: The panel title, as in the reference (``"MP Server"``).
        source: The upstream module the reference cites, for the docs.
        summary: One paragraph for the docs.
        fields: Its flags, in the reference's order.
    """

    key: str
    panel: str
    source: str
    summary: str
    fields: tuple[FlagField, ...]


@dataclass
class _Draft:
    key: str
    model: type[GroupSettings]
    fields: list[FlagField]


def _fields_of(model: type[GroupSettings]) -> list[FlagField]:
    return [FlagField(name, info, model) for name, info in model.model_fields.items()]


@dataclass(frozen=True)
class FlagLayout:
    """Every flag of ``lmcache server``, grouped and ordered.

    Attributes:
        groups: The groups, in the reference's order.
        plugin_models: The plugins' settings models that were composed in.
    """

    groups: tuple[FlagGroup, ...]
    plugin_models: tuple[type[PluginSettings], ...] = ()

    @classmethod
    def compose(cls, plugin_models: Iterable[type[PluginSettings]] = ()) -> FlagLayout:
        """The core's groups with each plugin model's flags placed per its ``group``/``after``.

        A model whose anchor belongs to a model placed later waits for it; one
        whose anchor is absent (its plugin is not installed) goes last.

        Raises:
            ConfigError: A model names no group, or two models declare the same flag.
        """
        from lmcache_core.config.server import ServerConfig

        models = tuple(dict.fromkeys(plugin_models))
        drafts = [
            _Draft(key, group, _fields_of(group)) for key, group in ServerConfig.groups().items()
        ]
        declared = {f.name: f.model for draft in drafts for f in draft.fields}
        for model in models:
            if not model.group:
                raise ConfigError(None, f"settings model {_qualname(model)} names no group")
            for name in model.model_fields:
                if name in declared:
                    raise ConfigError(
                        flag_name(name),
                        f"declared by both {_qualname(declared[name])} and {_qualname(model)}",
                    )
                declared[name] = model
        pending = list(models)
        while pending:
            placeable = [m for m in pending if _anchor_present(drafts, m)]
            for model in placeable or pending:  # no progress: the rest go last
                _place(drafts, model, use_anchor=bool(placeable))
            pending = [m for m in pending if m not in (placeable or pending)]
        groups = tuple(
            FlagGroup(d.key, d.model.panel, d.model.source, d.model.summary, tuple(d.fields))
            for d in drafts
        )
        return cls(groups=groups, plugin_models=models)

    def fields(self) -> Iterator[FlagField]:
        """Every flag, group by group."""
        for group in self.groups:
            yield from group.fields

    def owners(self) -> dict[str, type[GroupSettings]]:
        """Field name -> the model that validates it."""
        return {f.name: f.model for f in self.fields()}


def _qualname(model: type) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def _find(drafts: list[_Draft], key: str) -> _Draft | None:
    return next((d for d in drafts if d.key == key), None)


def _anchor_present(drafts: list[_Draft], model: type[PluginSettings]) -> bool:
    if not model.after:
        return True
    host = _find(drafts, model.group)
    if host is None:  # a group of its own: ``after`` names a group
        return _find(drafts, model.after) is not None
    return any(f.name == model.after for f in host.fields)


def _place(drafts: list[_Draft], model: type[PluginSettings], *, use_anchor: bool) -> None:
    anchor = model.after if use_anchor else ""
    fields = _fields_of(model)
    host = _find(drafts, model.group)
    if host is not None:
        names = [f.name for f in host.fields]
        at = names.index(anchor) + 1 if anchor else len(names)
        host.fields[at:at] = fields
        return
    keys = [d.key for d in drafts]
    at = keys.index(anchor) + 1 if anchor else len(keys)
    drafts.insert(at, _Draft(model.group, model, fields))
