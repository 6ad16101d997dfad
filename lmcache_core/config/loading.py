"""Build a :class:`ServerConfig` from command-line values and the environment.

Precedence, highest first: a flag given on the command line, the environment
variable ``LMCACHE_<FLAG_NAME>``, the documented default. Every validation error
becomes a :class:`~lmcache_core.errors.ConfigError` naming the flag.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from lmcache_core.config.base import env_name, flag_name
from lmcache_core.config.server import ServerConfig
from lmcache_core.errors import ConfigError

_MAX_SHOWN_INPUT = 80
_FLAG_IN_MESSAGE = re.compile(r"--(?:no-)?([a-z0-9][a-z0-9-]*)")


def field_groups() -> dict[str, str]:
    """Flag field name -> the attribute of :class:`ServerConfig` holding its group."""
    owners: dict[str, str] = {}
    for group_attr, group in ServerConfig.groups().items():
        for field_name in group.model_fields:
            owners[field_name] = group_attr
    return owners


def load_config(cli_values: Mapping[str, Any] | None = None) -> ServerConfig:
    """Validate the configuration from flags (given as field names) and the environment.

    Args:
        cli_values: Values of the flags given on the command line, keyed by field
            name (``l1_size_gb``). Flags not given must be absent.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: The first problem found, naming its flag.
    """
    cli_values = dict(cli_values or {})
    owners = field_groups()
    unknown = sorted(set(cli_values) - set(owners))
    if unknown:
        raise ConfigError(flag_name(unknown[0]), "no such flag")
    per_group: dict[str, dict[str, Any]] = {attr: {} for attr in ServerConfig.groups()}
    for field_name, value in cli_values.items():
        per_group[owners[field_name]][field_name] = value
    groups: dict[str, Any] = {}
    for attr, group in ServerConfig.groups().items():
        try:
            groups[attr] = group(**per_group[attr])
        except ValidationError as exc:
            raise _to_config_error(exc, cli_values) from None
    try:
        return ServerConfig(**groups)
    except ValidationError as exc:
        raise _to_config_error(exc, cli_values) from None


def _to_config_error(exc: ValidationError, cli_values: Mapping[str, Any]) -> ConfigError:
    error = exc.errors(include_url=False)[0]
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    loc = [part for part in error["loc"] if isinstance(part, str)]
    if not loc:  # a rule across fields: its message starts with the flag it is about
        from_env = _env_sources(message, cli_values)
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


def _env_sources(message: str, cli_values: Mapping[str, Any]) -> list[str]:
    """The environment variables that set the flags a cross-field message names."""
    owners = field_groups()
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
