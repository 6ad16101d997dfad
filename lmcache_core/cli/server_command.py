"""``lmcache server``: every flag of the configuration reference, generated from the models.

The options are derived from a :class:`~lmcache_core.config.layout.FlagLayout`:
the core's group models plus the settings models of the installed plugins, so
the CLI, the environment variables and the docs share one source of truth. The
CLI passes on only the flags actually given; pydantic-settings then fills the
rest from ``LMCACHE_<FLAG_NAME>`` and the defaults, and validates everything.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar

import typer
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from lmcache_core.config.base import CliMeta, cli_meta, env_name, flag_name
from lmcache_core.config.layout import FlagLayout
from lmcache_core.config.loading import load_config
from lmcache_core.config.plugin_settings import settings_models
from lmcache_core.config.resolution import resolve_plugins
from lmcache_core.errors import StartupError
from lmcache_core.log_setup import configure_logging
from lmcache_core.plugin.registry import DISABLE_ENV, PluginRegistry
from lmcache_core.server.startup import check_startup

EXTRA_PANEL = "Plugins and validation"


def _is_bool(info: FieldInfo) -> bool:
    return info.annotation is bool


def _help(text: str) -> str:
    """Escape ``[`` so rich markup does not swallow ``[env: ...]`` from ``--help``."""
    if typer.core.DEFAULT_MARKUP_MODE == "rich":
        return text.replace("[", "\\[")
    return text


def _default_text(info: FieldInfo, meta: CliMeta) -> str | bool:
    if meta.default_text is not None:
        return meta.default_text
    if _is_bool(info):
        return "on" if info.default else "off"
    if info.default is PydanticUndefined or info.default is None:
        return False
    if info.default_factory is not None:
        return json.dumps(info.default_factory())  # type: ignore[call-arg]
    return str(info.default)


def _parameter(field_name: str, info: FieldInfo, panel: str) -> inspect.Parameter:
    meta = cli_meta(info)
    flag = flag_name(field_name)
    help_text = _help(f"{info.description} [env: {env_name(field_name)}]")
    common: dict[str, Any] = {
        "help": help_text,
        "rich_help_panel": panel,
        "show_default": _default_text(info, meta),
    }
    annotation: Any
    if _is_bool(info):
        decl = f"{flag}/--no-{flag[2:]}" if meta.negatable else flag
        annotation = Annotated[bool, typer.Option(decl, **common)]
        default: Any = bool(info.default)
    elif meta.variadic or meta.repeatable:
        annotation = Annotated[
            list[str] | None,
            typer.Option(flag, *meta.aliases, metavar=meta.metavar or "VALUE", **common),
        ]
        default = None
    else:
        metavar = meta.metavar or _metavar(info)
        annotation = Annotated[
            str | None, typer.Option(flag, *meta.aliases, metavar=metavar, **common)
        ]
        default = None
    return inspect.Parameter(
        field_name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _metavar(info: FieldInfo) -> str:
    annotation = info.annotation
    if annotation is int:
        return "INTEGER"
    if annotation is float:
        return "FLOAT"
    args = getattr(annotation, "__args__", ())
    if args and all(isinstance(a, str) for a in args):  # a Literal
        return "[" + "|".join(args) + "]"
    return "TEXT"


def variadic_flags(layout: FlagLayout) -> set[str]:
    """Flags that take several space-separated values, as in the reference."""
    return {flag_name(f.name) for f in layout.fields() if cli_meta(f.info).variadic}


def disabled_plugins(args: Iterable[str]) -> list[str]:
    """The names given to ``--disable-plugin`` in raw arguments.

    The plugins are loaded before the arguments are parsed (their flags are
    options of the command), so a disabled one must be known first: it is then
    never imported, and its flags do not exist.
    """
    names: list[str] = []
    tokens = list(args)
    for index, token in enumerate(tokens):
        if token == "--":
            break
        if token == "--disable-plugin" and index + 1 < len(tokens):
            names.append(tokens[index + 1])
        elif token.startswith("--disable-plugin="):
            names.append(token.partition("=")[2])
    return names


def expand_variadic(args: list[str], flags: set[str]) -> list[str]:
    """Rewrite ``--x a b`` as ``--x a --x b`` (and a bare ``--x`` as ``--x=``).

    Click options take one value each; the reference's lists take many after one
    flag. Values run until the next token that starts with ``-``.
    """
    out: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        index += 1
        if token not in flags:
            out.append(token)
            continue
        values = []
        while index < len(args) and not args[index].startswith("-"):
            values.append(args[index])
            index += 1
        if values:
            out.extend(f"{token}={value}" for value in values)
        else:
            out.append(f"{token}=")
    return out


class ServerCommand(typer.core.TyperCommand):
    """Accepts the reference's space-separated list flags before normal parsing.

    Use :func:`server_command_class`, which sets :attr:`variadic` for one layout.
    """

    variadic: ClassVar[frozenset[str]] = frozenset()

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Expand variadic flags, then parse as usual."""
        return super().parse_args(ctx, expand_variadic(list(args), set(self.variadic)))


def server_command_class(layout: FlagLayout) -> type[ServerCommand]:
    """A :class:`ServerCommand` that knows the variadic flags of ``layout``."""
    return type("ServerCommand", (ServerCommand,), {"variadic": frozenset(variadic_flags(layout))})


def _given(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    given = {}
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "COMMANDLINE":
            given[name] = value
    return given


def run_server_command(ctx: typer.Context, registry: PluginRegistry | None, **values: Any) -> None:
    """Validate the configuration, then print it (``--dry-run``) or run the server.

    Args:
        ctx: The click context (tells which flags were given).
        registry: The plugins the command's flags were composed from; ``None``
            loads them now (their flags were not options, so only the
            environment and the defaults set them).
        values: The parsed options.
    """
    dry_run = values.pop("dry_run")
    disabled = values.pop("disable_plugin") or []
    configure_logging()
    if registry is None:
        registry = PluginRegistry(disabled=disabled)
    config = load_config(_given(ctx, values), plugins=settings_models(registry))
    selection = resolve_plugins(config, registry)
    report = check_startup(config, selection)
    if dry_run:
        document = {
            "config": config.public_dict(),
            "plugins": selection.describe(registry),
            "startup": report.as_dict(),
        }
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    if report.errors:
        raise StartupError(report.errors[0])
    from lmcache_core.server.runner import serve  # the server stack loads only when serving

    raise typer.Exit(serve(config, registry, selection, report))


def build_server_function(layout: FlagLayout, registry: PluginRegistry | None = None) -> Any:
    """The ``server`` command's callback, with one typed parameter per flag of ``layout``.

    Args:
        layout: The flags: the core's, plus those of the plugins in ``registry``.
        registry: The plugins ``layout`` was composed from, reused to serve.
    """
    parameters = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    ]
    for group in layout.groups:
        for flag in group.fields:
            parameters.append(_parameter(flag.name, flag.info, group.panel))
    parameters.append(
        inspect.Parameter(
            "disable_plugin",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                list[str] | None,
                typer.Option(
                    "--disable-plugin",
                    metavar="NAME",
                    help=_help(
                        "Skip this plugin (entry-point or distribution name) before importing "
                        f"it; repeatable. [env: {DISABLE_ENV}]"
                    ),
                    rich_help_panel=EXTRA_PANEL,
                ),
            ],
        )
    )
    parameters.append(
        inspect.Parameter(
            "dry_run",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[
                bool,
                typer.Option(
                    "--dry-run",
                    help="Print the resolved configuration as JSON and exit without starting.",
                    rich_help_panel=EXTRA_PANEL,
                ),
            ],
        )
    )

    def server(ctx: typer.Context, **values: Any) -> None:
        run_server_command(ctx, registry, **values)

    server.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    server.__annotations__ = {p.name: p.annotation for p in parameters}
    server.__doc__ = (
        "Run the LMCache multiprocess KV-cache server. Every flag can also be set with "
        "LMCACHE_<FLAG_NAME>; a flag on the command line wins."
    )
    return server


def server_layout(registry: PluginRegistry | None) -> FlagLayout:
    """The flags of ``lmcache server``: the core's, plus those of ``registry``'s plugins."""
    return FlagLayout.compose(settings_models(registry) if registry is not None else ())
