"""Generate ``docs/configuration.md`` from the configuration models and the installed plugins.

The flag tables come from the :class:`FlagLayout` of the core's group models and
the installed plugins' settings models (the same layout the CLI and the
environment loader read), and the L2 adapter tables from
the ``config_model`` of every installed L2 adapter plugin, so the page cannot
drift from the code. The output is deterministic: no timestamps, no versions,
and adapters sorted by name.

Usage::

    python tools/gen_config_docs.py            # rewrite docs/configuration.md
    python tools/gen_config_docs.py --check    # exit 1 if docs/configuration.md is stale
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import enum
import json
import os
import sys
import types
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lmcache_core.config.base import ENV_PREFIX, cli_meta, env_name, flag_name
from lmcache_core.config.l2_adapter import L2AdapterConfigBase
from lmcache_core.config.layout import FlagGroup, FlagLayout
from lmcache_core.config.plugin_settings import settings_models
from lmcache_core.log_setup import LEVELS, LOG_LEVEL_ENV
from lmcache_core.plugin.registry import (
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    STRICT_ENV,
    PluginRegistry,
)
from lmcache_core.plugin.specs import EngineSpec, L2AdapterSpec, PluginKind

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "configuration.md"
REGENERATE = "python tools/gen_config_docs.py"

# Constraint attributes of pydantic / annotated-types metadata, in display order.
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("multiple_of", "multiple of"))
_LENGTHS = (("min_length", "length >="), ("max_length", "length <="))

# Default factories that are safe to call: they build an empty container.
_CONTAINER_FACTORIES = (list, dict, set, tuple, frozenset)


# -- rendering of one field ------------------------------------------------------------


def cell(text: str) -> str:
    """Make ``text`` safe inside one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def code(text: str) -> str:
    """Wrap ``text`` in backquotes (a code span)."""
    return f"`{text}`"


def type_text(annotation: Any) -> str:
    """A readable, pipe-free name of a field's type (``int or null``, ``list[str]``)."""
    origin = get_origin(annotation)
    if origin is None:
        return _plain_type_text(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return type_text(args[0])
    if origin is Literal:
        return " or ".join(sorted({type(arg).__name__ for arg in args}))
    if origin in (Union, types.UnionType):
        return " or ".join(type_text(arg) for arg in args)
    name = getattr(origin, "__name__", str(origin))
    inner = ", ".join("..." if arg is Ellipsis else type_text(arg) for arg in args)
    return f"{name}[{inner}]" if inner else name


def _plain_type_text(annotation: Any) -> str:
    """The name of a non-generic type."""
    if annotation is type(None):
        text = "null"
    elif annotation is Any:
        text = "any"
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        text = f"object ({annotation.__name__})"
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        text = "str"
    elif isinstance(annotation, type):
        text = annotation.__name__
    else:
        text = str(annotation).replace("typing.", "")
    return text


def _literal_choices(annotation: Any) -> list[Any]:
    """The choices of a ``Literal`` annotation, also inside ``X | None``; else empty."""
    origin = get_origin(annotation)
    if origin is Literal:
        return list(get_args(annotation))
    if origin in (Union, types.UnionType, Annotated):
        return [choice for arg in get_args(annotation) for choice in _literal_choices(arg)]
    return []


def _metadata_values(info: FieldInfo, attr: str) -> list[Any]:
    """Every value of constraint ``attr`` (``ge``, ``min_length``) in a field's metadata."""
    values = (getattr(item, attr, None) for item in info.metadata)
    return [value for value in values if value is not None]


def constraints_text(info: FieldInfo) -> str:
    """Bounds, lengths, patterns and ``Literal`` choices of a field, comma-separated."""
    parts: list[str] = []
    choices = _literal_choices(info.annotation)
    if choices:
        parts.append("one of " + ", ".join(code(str(choice)) for choice in choices))
    for attr, label in _BOUNDS:
        parts += [f"{label} {v}" for v in _metadata_values(info, attr)]
    lengths = {attr: _metadata_values(info, attr) for attr, _ in _LENGTHS}
    if lengths["min_length"] and lengths["min_length"] == lengths["max_length"]:
        parts.append(f"length {lengths['min_length'][0]}")
    else:
        for attr, label in _LENGTHS:
            parts += [f"{label} {v}" for v in lengths[attr]]
    for item in info.metadata:
        if getattr(item, "allow_inf_nan", None) is False:
            parts.append("finite")
        pattern = getattr(item, "pattern", None)
        if pattern is not None:
            parts.append(f"matches {code(str(pattern))}")
    return ", ".join(parts)


def _json_default(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return code(json.dumps(value, sort_keys=True))
    except TypeError:
        return code(repr(value))


def _factory_default(info: FieldInfo) -> Any:
    """The value of a container default factory, or ``None`` for any other factory.

    Other factories may be random (a fresh UUID) or costly, so they are never
    called: the page must come out the same on every run.
    """
    factory = info.default_factory
    if factory in _CONTAINER_FACTORIES:
        return factory()
    return None


def flag_default_text(info: FieldInfo) -> str:
    """How the flag tables show a default: as ``--help`` does (``on``/``off``, ``not set``)."""
    meta = cli_meta(info)
    if meta.default_text is not None:
        text = meta.default_text
    elif info.is_required():
        text = "required"
    elif info.default_factory is not None:
        value = _factory_default(info)
        text = "computed at start-up" if value is None else _json_default(value)
    elif info.annotation is bool:
        text = "on" if info.default else "off"
    elif info.default is None:
        text = "not set"
    elif info.default == "":
        text = code('""')
    elif isinstance(info.default, str):
        text = code(info.default)
    else:
        text = _json_default(info.default)
    return text


def json_default_text(info: FieldInfo) -> str:
    """How the adapter tables show a default: as the JSON value (``null``, ``false``)."""
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value = _factory_default(info)
        return "computed" if value is None else _json_default(value)
    return _json_default(info.default)


def flag_text(field_name: str, info: FieldInfo) -> str:
    """The flag column: ``--x/--no-x`` for negatable booleans, the value shape for lists."""
    meta = cli_meta(info)
    flag = flag_name(field_name)
    if info.annotation is bool and meta.negatable:
        return code(f"{flag}/--no-{flag[2:]}")
    if meta.variadic:
        return code(f"{flag} {meta.metavar or 'VALUE...'}") + " (zero or more values)"
    if meta.repeatable:
        text = code(f"{flag} {meta.metavar or 'VALUE'}") + " (repeatable)"
        return text + "".join(f", alias {code(alias)}" for alias in meta.aliases)
    return code(flag)


def table(header: list[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table, then a blank line."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(part) for part in row) + " |" for row in rows]
    return [*lines, ""]


# -- sections ---------------------------------------------------------------------------


def render_group(group: FlagGroup) -> list[str]:
    """One flag group: title, source, summary and its flag table (plugins' flags included)."""
    lines = [
        f"## {group.panel}",
        "",
        f"Source (upstream): `{group.source}`",
        "",
        group.summary,
        "",
    ]
    rows = [
        [
            flag_text(flag.name, flag.info),
            code(env_name(flag.name)),
            type_text(flag.info.annotation),
            flag_default_text(flag.info),
            constraints_text(flag.info),
            flag.info.description or "",
        ]
        for flag in group.fields
    ]
    header = ["Flag", "Environment variable", "Type", "Default", "Constraints", "Description"]
    return lines + table(header, rows)


def _same_field(a: FieldInfo, b: FieldInfo) -> bool:
    return (a.annotation, a.default, a.default_factory, a.description, a.metadata) == (
        b.annotation,
        b.default,
        b.default_factory,
        b.description,
        b.metadata,
    )


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models that appear in an annotation (``X | None``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _nested_models(arg)]


def model_table(model: type[BaseModel], skip: frozenset[str] = frozenset()) -> list[str]:
    """A field table of a pydantic model (name, type, default, constraints, description)."""
    rows = [
        [
            code(info.alias or name),
            type_text(info.annotation),
            json_default_text(info),
            constraints_text(info),
            info.description or "",
        ]
        for name, info in model.model_fields.items()
        if name not in skip
    ]
    return table(["Field", "Type", "Default", "Constraints", "Description"], rows)


def _nested_sections(
    models: list[type[BaseModel]], documented: set[type[BaseModel]], level: str
) -> list[str]:
    """A table for each nested model not documented yet, recursively."""
    lines: list[str] = []
    for model in models:
        if model in documented:
            continue
        documented.add(model)
        lines += [f"{level} `{model.__name__}`", ""]
        if model.__doc__:
            lines += [model.__doc__.strip().splitlines()[0], ""]
        lines += model_table(model)
        inner = [m for info in model.model_fields.values() for m in _nested_models(info.annotation)]
        lines += _nested_sections(inner, documented, level)
    return lines


def render_adapter(
    spec: L2AdapterSpec, registry: PluginRegistry, documented: set[type[BaseModel]]
) -> list[str]:
    """One L2 adapter type: where it comes from, its state and its own fields."""
    model = spec.config_model
    assert model is not None  # L2AdapterSpec requires it
    record = registry.owner(spec)
    lines = [f"### `{spec.name}`", ""]
    if spec.description:
        lines += [spec.description, ""]
    facts = [f"Distribution: `{record.distribution}`", f"Configuration model: `{model.__name__}`"]
    if spec.aliases:
        facts.append("Aliases: " + ", ".join(code(alias) for alias in sorted(spec.aliases)))
    status = f"not implemented yet: {spec.not_implemented}" if spec.not_implemented else "ok"
    facts.append(f"Status: {status}")
    lines += [*(f"- {fact}" for fact in facts), ""]
    inherited: frozenset[str] = frozenset()
    if issubclass(model, L2AdapterConfigBase):
        base_fields = L2AdapterConfigBase.model_fields
        inherited = frozenset(
            name
            for name, info in model.model_fields.items()
            if name in base_fields and _same_field(info, base_fields[name])
        )
    own = [name for name in model.model_fields if name not in inherited]
    if own:
        if inherited:
            lines += ["Besides the common fields:", ""]
        lines += model_table(model, skip=inherited)
    else:
        lines += ["No fields besides the common ones.", ""]
    nested = [m for name in own for m in _nested_models(model.model_fields[name].annotation)]
    lines += _nested_sections(nested, documented, "####")
    return lines


def render_adapters(registry: PluginRegistry) -> list[str]:
    """The "L2 adapter types" section: common fields, then every installed adapter."""
    specs = sorted(
        (spec for spec in registry.specs(PluginKind.L2_ADAPTER) if isinstance(spec, L2AdapterSpec)),
        key=lambda spec: spec.name.lower(),
    )
    lines = [
        "## L2 adapter types",
        "",
        "Each `--l2-adapter` JSON object is validated against the configuration model of the "
        "adapter plugin its `type` names. Models forbid unknown fields, so a typo fails at "
        "start-up with the field named. The adapter types below are those installed in the "
        "environment that generated this page.",
        "",
    ]
    if not specs:
        return [*lines, "No L2 adapter plugin is installed.", ""]
    lines += [
        "Installed adapter types: " + ", ".join(code(spec.name) for spec in specs) + ".",
        "",
        "### Fields of every adapter",
        "",
        "Every adapter model derives from `L2AdapterConfigBase`:",
        "",
        *model_table(L2AdapterConfigBase),
    ]
    documented: set[type[BaseModel]] = set()
    common = [
        m for i in L2AdapterConfigBase.model_fields.values() for m in _nested_models(i.annotation)
    ]
    lines += _nested_sections(common, documented, "####")
    for spec in specs:
        lines += render_adapter(spec, registry, documented)
    return lines


def render_engines(registry: PluginRegistry) -> list[str]:
    """The "Engines" section: every installed engine, described by its own plugin."""
    specs = sorted(
        (spec for spec in registry.specs(PluginKind.ENGINE) if isinstance(spec, EngineSpec)),
        key=lambda spec: spec.name.lower(),
    )
    lines = [
        "## Engines",
        "",
        "`--engine-type` names one of the installed engine plugins below (those installed in "
        "the environment that generated this page). An engine refuses a "
        "`--supported-transfer-mode` it does not list.",
        "",
    ]
    if not specs:
        return [*lines, "No engine plugin is installed.", ""]
    rows = [
        (
            code(spec.name),
            code(registry.owner(spec).distribution),
            ", ".join(code(mode) for mode in sorted(spec.transfer_modes)),
            spec.description
            + (f" Not implemented yet: {spec.not_implemented}" if spec.not_implemented else ""),
        )
        for spec in specs
    ]
    return lines + table(["Engine", "Distribution", "Transfer modes", "Description"], rows)


def render_environment() -> list[str]:
    """The "Environment variables" section."""
    levels = ", ".join(code(level) for level in LEVELS)
    rows = [
        (
            code(f"{ENV_PREFIX}<FLAG_NAME>"),
            f"Every flag above can be set in the environment: `--l1-size-gb` is "
            f"`{env_name('l1_size_gb')}`. A flag given on the command line wins over the "
            "environment, which wins over the default. Booleans take `1`/`0` or `true`/`false`; "
            "list flags take a JSON list or space- or comma-separated words; "
            f"`{env_name('l2_adapter')}` takes one JSON object or a JSON list of them.",
        ),
        (
            code(LOG_LEVEL_ENV),
            f"Log level: one of {levels} (default `INFO`). Any other value is a start-up "
            "error. `DEBUG` also turns on the HTTP access log.",
        ),
        (
            code("PYTHONHASHSEED"),
            "Set to a fixed value for reproducible hashes across processes with "
            "`--hash-algorithm builtin` (Python's `hash()` is salted per process otherwise). "
            "Chunk hashing is part of the data path, which lands with issue #3.",
        ),
        (
            code(STRICT_ENV),
            "`1`, `true`, `yes` or `on`: a plugin that fails to load, or a name registered by "
            "two distributions, raises instead of being logged and skipped. On in tests and CI.",
        ),
        (
            code(DISABLE_ENV),
            f"Comma- or space-separated entry-point or distribution names (of the "
            f"`{ENTRY_POINT_GROUP}` group) to skip before they are imported. "
            "`--disable-plugin NAME` (repeatable) adds to this list.",
        ),
    ]
    return ["## Environment variables", "", *table(["Variable", "Description"], rows)]


def render_header() -> list[str]:
    """Title and introduction of the page."""
    return [
        "# Configuration reference",
        "",
        f"<!-- Generated by {REGENERATE} from the configuration models; do not edit. -->",
        "",
        "Every flag of `lmcache server`, grouped as in the upstream configuration reference. "
        "This page is generated from the same pydantic models that the command line and the "
        f"environment loader read; regenerate it with `{REGENERATE}`.",
        "",
        "Each group is validated on its own, then rules across groups run (for example "
        "`--enable-tracing` requires `--otlp-endpoint`). Plugin names (`--engine-type`, "
        "`--eviction-policy`, the L2 policies, each adapter `type`) are resolved against the "
        "installed plugins: `IsolatedLRU` and `isolated_lru` select the same plugin, and an "
        "unknown name fails with the list of installed names. "
        "`lmcache server --dry-run ...` prints the resolved configuration as JSON without "
        "starting anything.",
        "",
        "Besides the flags below, `lmcache server` takes `--disable-plugin NAME` (repeatable: "
        "skip a plugin before importing it) and `--dry-run`.",
        "",
    ]


def render(registry: PluginRegistry) -> str:
    """The whole page."""
    lines = render_header()
    for group in FlagLayout.compose(settings_models(registry)).groups:
        lines += render_group(group)
    lines += render_engines(registry)
    lines += render_adapters(registry)
    lines += render_environment()
    return "\n".join(lines).rstrip("\n") + "\n"


@contextlib.contextmanager
def _without_env(name: str) -> Iterator[None]:
    """Hide one environment variable for the duration of the block."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def load_registry() -> PluginRegistry:
    """A strict registry of every installed plugin, ignoring ``LMCACHE_DISABLE_PLUGINS``.

    Strict, so a broken plugin stops generation instead of silently vanishing from
    the page; disabled plugins are loaded anyway, so the page does not depend on
    the caller's environment.
    """
    with _without_env(DISABLE_ENV):
        return PluginRegistry(strict=True)


def check(path: Path, expected: str) -> bool:
    """Whether ``path`` holds exactly ``expected``; print a short diff when it does not."""
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if current == expected:
        return True
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        expected.splitlines(keepends=True),
        fromfile=f"{path} (committed)",
        tofile=f"{path} (generated)",
        n=1,
    )
    shown = list(diff)[:40]
    sys.stderr.writelines(shown)
    sys.stderr.write(f"\n{path} is stale: run {REGENERATE}\n")
    return False


def main(argv: list[str] | None = None) -> int:
    """Write the page, or with ``--check`` compare it; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the file differs from what would be generated",
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT}")
    args = parser.parse_args(argv)
    text = render(load_registry())
    if args.check:
        return 0 if check(args.output, text) else 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
