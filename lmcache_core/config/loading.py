"""Build a :class:`ServerConfig` from command-line values and the environment.

The flags are the core's groups plus the settings models of the installed
plugins (:class:`~lmcache_core.config.layout.FlagLayout`). Precedence, highest
first: a flag given on the command line, the environment variable
``LMCACHE_<FLAG_NAME>``, the documented default. Every validation error becomes a
:class:`~lmcache_core.errors.ConfigError` naming the flag.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from lmcache_core.config.base import GroupSettings, env_name, flag_name
from lmcache_core.config.layout import FlagLayout
from lmcache_core.config.plugin_settings import PluginSettings, installed_settings_models
from lmcache_core.config.server import ServerConfig
from lmcache_core.errors import ConfigError

_MAX_SHOWN_INPUT = 80
_FLAG_IN_MESSAGE = re.compile(r"--(?:no-)?([a-z0-9][a-z0-9-]*)")


def load_config(
    cli_values: Mapping[str, Any] | None = None,
    *,
    plugins: Sequence[type[PluginSettings]] | None = None,
) -> ServerConfig:
    """Validate the configuration from flags (given as field names) and the environment.

    Args:
        cli_values: Values of the flags given on the command line, keyed by field
            name (``l1_size_gb``). Flags not given must be absent.
        plugins: The plugins' settings models whose flags exist; ``None`` loads
            them from the installed, enabled plugins (which imports their
            registration modules). Pass ``()`` for the core's flags only.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: The first problem found, naming its flag.
    """
    cli_values = dict(cli_values or {})
    layout = FlagLayout.compose(installed_settings_models() if plugins is None else plugins)
    owners = layout.owners()
    unknown = sorted(set(cli_values) - set(owners))
    if unknown:
        raise ConfigError(flag_name(unknown[0]), "no such flag")
    per_model: dict[type[GroupSettings], dict[str, Any]] = {}
    for field_name, value in cli_values.items():
        per_model.setdefault(owners[field_name], {})[field_name] = value
    models: list[type[GroupSettings]] = [*ServerConfig.groups().values(), *layout.plugin_models]
    built: dict[type[GroupSettings], GroupSettings] = {}
    for model in models:
        try:
            built[model] = model(**per_model.get(model, {}))
        except ValidationError as exc:
            raise _to_config_error(exc, cli_values, owners) from None
    core = {attr: built[group] for attr, group in ServerConfig.groups().items()}
    plugin_settings = tuple(built[model] for model in layout.plugin_models)
    try:
        return ServerConfig(**core, plugins=plugin_settings)
    except ValidationError as exc:
        raise _to_config_error(exc, cli_values, owners) from None


def _to_config_error(
    exc: ValidationError, cli_values: Mapping[str, Any], owners: Mapping[str, object]
) -> ConfigError:
    error = exc.errors(include_url=False)[0]
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    loc = [part for part in error["loc"] if isinstance(part, str)]
    if not loc:  # a rule across fields: its message starts with the flag it is about
        from_env = _env_sources(message, cli_values, owners)
        if from_env:
            message += f" (from {', '.join(from_env)})"
        return ConfigError(None, message)
    field_name = loc[0]
    flag = flag_name(field_name)
    if field_name not in cli_values and env_name(field_name) in os.environ:
        flag += f" (from {env_name(field_name)})"
    if error["type"] == "missing":
        return ConfigError(
            flag, f"is required (give {flag_name(field_name)} or set {env_name(field_name)})"
        )
    problem = message[0].lower() + message[1:] if message else "invalid value"
    shown = error.get("input")
    if isinstance(shown, (str, int, float)) and not isinstance(shown, bool):
        text = repr(shown)
        if len(text) <= _MAX_SHOWN_INPUT:
            problem += f" (got {text})"
    return ConfigError(flag, problem)


def _env_sources(
    message: str, cli_values: Mapping[str, Any], owners: Mapping[str, object]
) -> list[str]:
    """The environment variables that set the flags a cross-field message names."""
    names: list[str] = []
    for match in _FLAG_IN_MESSAGE.finditer(message):
        field_name = match.group(1).replace("-", "_")
        variable = env_name(field_name)
        if (
            field_name in owners
            and field_name not in cli_values
            and variable in os.environ
            and variable not in names
        ):
            names.append(variable)
    return names
