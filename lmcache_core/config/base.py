"""Shared machinery of the configuration groups.

Every flag of the configuration reference is a field of one group model. The
field's name is the flag's name in snake_case, which also gives its environment
variable (``--l1-size-gb`` <-> ``l1_size_gb`` <-> ``LMCACHE_L1_SIZE_GB``). The CLI,
the environment loader and the generated configuration reference all read the
same models, so they cannot drift apart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LMCACHE_"


@dataclass(frozen=True)
class CliMeta:
    """How a field is spelled on the command line (``Annotated`` metadata).

    Attributes:
        negatable: A boolean with an explicit off switch (``--x/--no-x``).
        variadic: Takes zero or more values after one flag (``--x a b c``), like
            the reference's space-separated lists; may also be repeated.
        repeatable: One value per occurrence (``--x A --x B``).
        metavar: The placeholder shown in ``--help``.
        default_text: How ``--help`` shows the default, when the value is not
            the literal default (``inherits --max-workers``).
        aliases: Other spellings of the flag (upstream's compatibility names).
    """

    negatable: bool = False
    variadic: bool = False
    repeatable: bool = False
    metavar: str | None = None
    default_text: str | None = None
    aliases: tuple[str, ...] = ()


def flag_name(field_name: str) -> str:
    """``l1_size_gb`` -> ``--l1-size-gb``."""
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    """``l1_size_gb`` -> ``LMCACHE_L1_SIZE_GB``."""
    return ENV_PREFIX + field_name.upper()


def cli_meta(info: FieldInfo) -> CliMeta:
    """The :class:`CliMeta` attached to a field, or the default one."""
    for item in info.metadata:
        if isinstance(item, CliMeta):
            return item
    return CliMeta()


class GroupSettings(BaseSettings):
    """Base of every flag group: reads ``LMCACHE_<FLAG_NAME>`` from the environment.

    Values passed to the constructor (the flags given on the command line) win
    over the environment, which wins over the documented default.

    Class attributes:
        panel: The group's title, as in the reference (and in ``--help``).
        source: The upstream module the reference cites for the group.
        summary: One paragraph describing the group, for the docs.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        validate_default=True,
        case_sensitive=False,
    )

    panel: ClassVar[str] = ""
    source: ClassVar[str] = ""
    summary: ClassVar[str] = ""


_WORD_SPLIT = re.compile(r"[\s,]+")


def parse_word_list(value: Any) -> Any:
    """Accept a list, a JSON list, or a space/comma-separated string of words.

    Empty strings are dropped, so ``--x`` given with no values yields ``[]``.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = json.loads(text)
        else:
            return [word for word in _WORD_SPLIT.split(text) if word]
    if isinstance(value, (list, tuple)):
        return [item for item in value if item != ""]
    return value


def parse_json_object(value: Any, what: str) -> Any:
    """Parse a JSON object given as text; leave a mapping untouched.

    Raises:
        ValueError: The text is not JSON, or not a JSON object.
    """
    if isinstance(value, (bytes, str)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


SECRET_MASK = "**********"
_SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|credential|api_?key", re.IGNORECASE)


def _is_secret_key(key: str) -> bool:
    # A file's path is not its content: ``api_key_file`` names where a key is, not the key.
    return bool(_SECRET_KEY.search(key)) and not key.endswith(("_file", "_path"))


def mask_secrets(value: Any) -> Any:
    """A copy of JSON-like data with the values of secret-looking keys masked.

    Raw JSON options (``--l2-adapter``, ``--runtime-plugin-config``) are shown in
    ``--dry-run`` and ``/status``; a password in them must not be.
    """
    if isinstance(value, dict):
        return {
            key: SECRET_MASK
            if isinstance(key, str) and _is_secret_key(key) and item is not None
            else mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(item) for item in value]
    return value
