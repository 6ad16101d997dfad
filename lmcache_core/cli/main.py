"""The ``lmcache`` entry point: core commands plus commands registered by plugins."""

from __future__ import annotations

import sys
from typing import Any

import typer

from lmcache_core import __version__
from lmcache_core.cli import admin_commands, plugins_command
from lmcache_core.cli.server_command import (
    build_server_function,
    disabled_plugins,
    server_command_class,
    server_layout,
)
from lmcache_core.errors import ConfigError, LMCacheError
from lmcache_core.plugin.registry import PluginRegistry, PluginStatus

CORE_COMMANDS = frozenset({"server", "plugins", "ping", "status", "explain", "quota", "cache"})

USAGE_EXIT = 2
FAILURE_EXIT = 1


def build_app(
    with_plugin_commands: bool, server_registry: PluginRegistry | None = None
) -> typer.Typer:
    """The typer app; plugin commands are added only when one may be invoked.

    Loading plugin commands imports every plugin, so it is skipped for core
    commands: ``lmcache server --disable-plugin X`` must not import X.

    Args:
        with_plugin_commands: Add the commands that plugins register.
        server_registry: The plugins whose flags ``lmcache server`` takes (it
            serves with them too); ``None``: the core's flags only.
    """
    app = typer.Typer(
        name="lmcache",
        help="LMCache multiprocess KV-cache server and admin tools.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    layout = server_layout(server_registry)
    app.command(
        "server", cls=server_command_class(layout), context_settings={"max_content_width": 120}
    )(build_server_function(layout, server_registry))
    app.add_typer(plugins_command.app, name="plugins")
    admin_commands.register(app)

    @app.callback(invoke_without_command=True)
    def root(
        version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    ) -> None:
        if version:
            typer.echo(__version__)
            raise typer.Exit(0)

    if with_plugin_commands:
        _add_plugin_commands(app)
    return app


def _add_plugin_commands(app: typer.Typer) -> None:
    from lmcache_core.plugin.specs import CliCommandSpec, PluginKind

    registry = PluginRegistry()
    for spec in registry.specs(PluginKind.CLI_COMMAND):
        if spec.name in CORE_COMMANDS:
            raise ConfigError(None, f"plugin CLI command {spec.name!r} clashes with a core command")
        assert isinstance(spec, CliCommandSpec)
        command = registry.builder.cli_command(spec)
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=spec.name, help=spec.description)
        else:
            app.command(spec.name, help=spec.description)(command)


def _disabled_hint(registry: PluginRegistry) -> str:
    """Why a flag may be missing: a plugin's flags vanish with it when it is disabled."""
    names = sorted(r.name for r in registry.records if r.status is PluginStatus.DISABLED)
    if not names:
        return ""
    return f" (the flags of disabled plugins do not exist: {', '.join(names)})"


def _first_command(argv: list[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every deliberate error is one line on stderr, never a traceback.

    Returns:
        The exit code: 0 on success, 2 for a usage or configuration error, 1 when
        the server cannot start or fails.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    code = _run(args)
    if argv is None:
        sys.exit(code)
    return code


def _run(args: list[str]) -> int:
    registry: PluginRegistry | None = None
    try:
        command_name = _first_command(args)
        if command_name == "server":
            # The server's flags include the installed plugins' own: load them (minus
            # the disabled ones, never imported) before the arguments are parsed.
            registry = PluginRegistry(disabled=disabled_plugins(args))
        app = build_app(command_name not in CORE_COMMANDS, server_registry=registry)
        command = typer.main.get_command(app)
        result: Any = command.main(args, prog_name="lmcache", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        return USAGE_EXIT
    except LMCacheError as exc:
        typer.echo(f"error: {exc}", err=True)
        return FAILURE_EXIT
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except typer.TyperException as exc:  # click's usage errors
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        hint = " (see --help)"
        if "No such option" in message and registry is not None:
            hint += _disabled_hint(registry)
        typer.echo(f"error: {' '.join(message.split())}{hint}", err=True)
        return int(getattr(exc, "exit_code", USAGE_EXIT))
