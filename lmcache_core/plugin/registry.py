"""Discovery and resolution of plugins installed through entry points.

One :class:`PluginRegistry` per server process (or CLI invocation), created by the
app factory, never at import time. It reads the ``lmcache.plugins`` entry-point
group itself, so it can skip disabled plugins *before* importing them, attribute
every spec to its distribution, and survive a broken plugin.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from lmcache_core.errors import (
    DuplicatePluginError,
    PluginLoadError,
    PluginNotImplementedError,
    UnknownPluginError,
)
from lmcache_core.plugin import hookspecs
from lmcache_core.plugin.kinds import KINDS, label
from lmcache_core.plugin.names import normalize_name
from lmcache_core.plugin.records import PluginRecord, PluginStatus, SpecRow
from lmcache_core.plugin.specs import PluginKind, PluginSpec

__all__ = [
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "STRICT_ENV",
    "PluginRecord",
    "PluginRegistry",
    "PluginStatus",
    "SpecRow",
    "ensure_implemented",
    "env_flag",
    "split_names",
]

if TYPE_CHECKING:
    from lmcache_core.plugin.builders import PluginBuilder

ENTRY_POINT_GROUP = "lmcache.plugins"
STRICT_ENV = "LMCACHE_PLUGINS_STRICT"
DISABLE_ENV = "LMCACHE_DISABLE_PLUGINS"

logger = logging.getLogger("lmcache.plugins")


def env_flag(name: str) -> bool:
    """Whether environment variable ``name`` holds a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def split_names(text: str) -> list[str]:
    """Split a comma- or space-separated list of names."""
    return [part for part in re.split(r"[,\s]+", text) if part]


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class PluginRegistry:
    """The plugins installed in this environment, resolved by kind and name.

    Args:
        strict: Re-raise load errors instead of marking the plugin broken.
            ``None`` reads ``LMCACHE_PLUGINS_STRICT``.
        disabled: Entry-point or distribution names to skip before import, in
            addition to those in ``LMCACHE_DISABLE_PLUGINS``.
        entry_points: The entry points to load; ``None`` reads the installed
            distributions' ``lmcache.plugins`` group.
    """

    def __init__(
        self,
        *,
        strict: bool | None = None,
        disabled: Iterable[str] = (),
        entry_points: Iterable[metadata.EntryPoint] | None = None,
    ) -> None:
        self.strict = env_flag(STRICT_ENV) if strict is None else strict
        env_disabled = split_names(os.environ.get(DISABLE_ENV, ""))
        self._disabled_as_written = {normalize_name(n): n for n in (*env_disabled, *disabled)}
        self.disabled = set(self._disabled_as_written)
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.plugin_manager.add_hookspecs(hookspecs)
        self.records: list[PluginRecord] = []
        self._providers: dict[PluginKind, dict[str, list[tuple[PluginSpec, PluginRecord]]]] = {
            kind: {} for kind in PluginKind
        }
        self._load(entry_points)

    # -- loading -----------------------------------------------------------------

    def _load(self, entry_points: Iterable[metadata.EntryPoint] | None) -> None:
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        seen: set[tuple[str, str]] = set()
        for ep in entry_points:
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "unknown"
            version = dist.version if dist is not None else "unknown"
            key = (normalize_name(dist_name), ep.name)
            if key in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(key)
            record = PluginRecord(ep.name, dist_name, version, ep.value)
            self.records.append(record)
            if {normalize_name(ep.name), normalize_name(dist_name)} & self.disabled:
                record.status = PluginStatus.DISABLED
                continue
            self._load_one(ep, record)
        self._check_conflicts()
        self._warn_unmatched_disables()

    def _warn_unmatched_disables(self) -> None:
        """Warn for each disabled name that matched no entry point or distribution.

        A spec name (``LRU``) is the usual mistake: the warning then names the
        entry point and distribution that would disable it.
        """
        matched = {
            key
            for record in self.records
            for key in (normalize_name(record.name), normalize_name(record.distribution))
        }
        for key, written in sorted(self._disabled_as_written.items()):
            if key in matched:
                continue
            owners = sorted(
                {
                    f"{record.name!r} (distribution {record.distribution})"
                    for kind_providers in self._providers.values()
                    for _, record in kind_providers.get(key, [])
                }
            )
            if owners:
                logger.warning(
                    "disabled plugin %r matched no entry point or distribution; it is the name "
                    "of a spec: to disable it, disable the entry point %s",
                    written,
                    " or ".join(owners),
                )
            else:
                logger.warning(
                    "disabled plugin %r matched no entry point or distribution; installed: %s",
                    written,
                    ", ".join(sorted({r.name for r in self.records})) or "none",
                )

    def _load_one(self, ep: metadata.EntryPoint, record: PluginRecord) -> None:
        plugin_key = f"{record.distribution}:{record.name}"
        try:
            module = ep.load()
            self.plugin_manager.register(module, name=plugin_key)
            try:
                self.plugin_manager.check_pending()
                self._reject_hook_options(plugin_key)
            except Exception:
                self.plugin_manager.unregister(name=plugin_key)
                raise
            specs = self._collect_specs(plugin_key)
        except Exception as exc:
            record.status = PluginStatus.BROKEN
            record.error = _one_line(exc)
            if self.plugin_manager.has_plugin(plugin_key):
                self.plugin_manager.unregister(name=plugin_key)
            if self.strict:
                raise PluginLoadError(
                    f"plugin {record.name!r} from {record.label} failed to load: {record.error}"
                ) from exc
            logger.warning(
                "plugin %r from %s is broken and was skipped: %s",
                record.name,
                record.label,
                record.error,
            )
            return
        record.specs = specs
        for spec in specs:
            for key in spec.keys:
                self._providers[spec.kind].setdefault(key, []).append((spec, record))

    def _reject_hook_options(self, plugin_key: str) -> None:
        """Refuse pluggy options that mean nothing here (the registry calls each impl itself)."""
        for info in KINDS.values():
            for impl in getattr(self.plugin_manager.hook, info.hook).get_hookimpls():
                if impl.plugin_name != plugin_key:
                    continue
                used = [
                    option
                    for option in ("tryfirst", "trylast", "wrapper", "hookwrapper")
                    if getattr(impl, option, False)
                ]
                if used:
                    raise TypeError(
                        f"{info.hook} uses @hookimpl({', '.join(f'{o}=True' for o in used)}), "
                        "which lmcache does not support: every implementation is called on "
                        "its own and all results are collected; use a plain @hookimpl"
                    )

    def _collect_specs(self, plugin_key: str) -> list[PluginSpec]:
        specs: list[PluginSpec] = []
        for kind, info in KINDS.items():
            hook_name = info.hook
            hook = getattr(self.plugin_manager.hook, hook_name)
            for impl in hook.get_hookimpls():
                if impl.plugin_name != plugin_key:
                    continue
                result = impl.function()
                specs.extend(self._validate_result(kind, hook_name, result))
        return specs

    @staticmethod
    def _validate_result(kind: PluginKind, hook_name: str, result: object) -> list[PluginSpec]:
        if result is None:
            return []
        if not isinstance(result, (list, tuple)):
            raise TypeError(f"{hook_name} returned {type(result).__name__}, not a list of specs")
        expected = KINDS[kind].spec_type
        for item in result:
            if not isinstance(item, expected):
                raise TypeError(
                    f"{hook_name} returned {type(item).__name__}, expected {expected.__name__}"
                )
        return list(result)

    def _check_conflicts(self) -> None:
        for kind, providers in self._providers.items():
            for key, entries in providers.items():
                if len(entries) < 2:
                    continue
                message = self._conflict_message(kind, key, entries)
                if self.strict:
                    raise DuplicatePluginError(message)
                logger.warning("%s", message)

    @staticmethod
    def _conflict_message(
        kind: PluginKind, key: str, entries: list[tuple[PluginSpec, PluginRecord]]
    ) -> str:
        owners = " and ".join(sorted(record.label for _, record in entries))
        return (
            f"{label(kind)} {key!r} is registered by both {owners}; uninstall one, "
            f"or disable one with {DISABLE_ENV} or --disable-plugin"
        )

    # -- queries -----------------------------------------------------------------

    def specs(self, kind: PluginKind) -> list[PluginSpec]:
        """Every healthy, unambiguous spec of ``kind``, in load order."""
        result: list[PluginSpec] = []
        for entries in self._providers[kind].values():
            if len(entries) == 1 and entries[0][0] not in result:
                result.append(entries[0][0])
        return result

    def names(self, kind: PluginKind) -> list[str]:
        """The names (as their plugins spell them) of every spec of ``kind``."""
        return sorted({spec.name for spec in self.specs(kind)}, key=str.lower)

    def broken(self) -> list[PluginRecord]:
        """The plugins that failed to load."""
        return [r for r in self.records if r.status is PluginStatus.BROKEN]

    def owner(self, spec: PluginSpec) -> PluginRecord:
        """The plugin record that registered ``spec``."""
        for entries in self._providers[spec.kind].values():
            for candidate, record in entries:
                if candidate is spec:
                    return record
        raise KeyError(spec.name)

    def resolve(self, kind: PluginKind, name: str) -> PluginSpec:
        """Find the spec that ``name`` selects for ``kind``.

        Args:
            kind: The kind of implementation.
            name: The configured name, in any case or separator style.

        Returns:
            The registered spec.

        Raises:
            UnknownPluginError: No healthy plugin registers the name; the message
                lists the installed names and any broken plugin.
            DuplicatePluginError: Two distributions register it.
        """
        key = normalize_name(name)
        entries = self._providers[kind].get(key, [])
        if len(entries) > 1:
            raise DuplicatePluginError(self._conflict_message(kind, key, entries))
        if entries:
            return entries[0][0]
        installed = ", ".join(self.names(kind)) or "none"
        message = f"unknown {label(kind)} {name!r}; installed: {installed}"
        broken = self.broken()
        if broken:
            details = "; ".join(f"{r.label} ({r.error})" for r in broken)
            message += f"; broken plugins that may provide it: {details}"
        raise UnknownPluginError(message)

    @property
    def builder(self) -> PluginBuilder:
        """The typed builders of resolved specs (what the server uses)."""
        from lmcache_core.plugin.builders import PluginBuilder

        return PluginBuilder(self)

    def build(self, kind: PluginKind, name: str, *args: Any, **kwargs: Any) -> Any:
        """Resolve ``name`` and call its factory with the given arguments (untyped).

        A convenience for tests and tools that start from a name. The server
        resolves names once (:func:`~lmcache_core.config.resolution.resolve_plugins`)
        and builds the resolved specs through :attr:`builder`, which is typed.

        Raises:
            PluginNotImplementedError: The plugin is registered but its behaviour
                has not landed yet.
            UnknownPluginError, DuplicatePluginError: See :meth:`resolve`.
        """
        spec = self.resolve(kind, name)
        ensure_implemented(spec, self.owner(spec))
        return spec.factory(*args, **kwargs)

    def rows(self) -> list[SpecRow]:
        """One row per registered spec, then one per disabled or broken plugin."""
        rows: list[SpecRow] = []
        for record in self.records:
            if record.status is not PluginStatus.OK:
                rows.append(
                    SpecRow(
                        name=record.name,
                        kind="-",
                        distribution=record.distribution,
                        version=record.version,
                        status=record.status.value,
                        error=record.error,
                    )
                )
                continue
            for spec in record.specs:
                rows.append(
                    SpecRow(
                        name=spec.name,
                        kind=spec.kind.value,
                        distribution=record.distribution,
                        version=record.version,
                        status=self._spec_status(spec),
                        description=spec.description,
                        error=spec.not_implemented,
                    )
                )
        return rows

    def _spec_status(self, spec: PluginSpec) -> str:
        if any(len(self._providers[spec.kind].get(key, [])) > 1 for key in spec.keys):
            return "conflict"
        if spec.not_implemented:
            return "not implemented yet"
        return "ok"


def ensure_implemented(spec: PluginSpec, record: PluginRecord | None = None) -> None:
    """Raise if ``spec`` is registered but its behaviour has not landed yet.

    Raises:
        PluginNotImplementedError: With the plugin's own reason.
    """
    if spec.not_implemented:
        where = f" ({record.label})" if record is not None else ""
        raise PluginNotImplementedError(
            f"{label(spec.kind)} {spec.name!r}{where} is not implemented yet: "
            f"{spec.not_implemented}"
        )
