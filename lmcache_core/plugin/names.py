"""Plugin name normalisation.

Configuration and environment variables use snake_case, but the reference's
spellings (``LRU``, ``IsolatedLRU``, ``skip_l1``, ``blend-legacy``) must keep
working; both resolve to the same key.
"""

from __future__ import annotations

import re

_LOWER_THEN_UPPER = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_ACRONYM_THEN_WORD = re.compile(r"(?<=[A-Z])(?=[A-Z][a-z])")


def normalize_name(name: str) -> str:
    """Return the lookup key of a plugin or distribution name.

    Args:
        name: A name as written by a user or a plugin author.

    Returns:
        The snake_case key: ``IsolatedLRU`` -> ``isolated_lru``, ``LRU`` -> ``lru``,
        ``lmcache-l2-fs`` -> ``lmcache_l2_fs``.
    """
    split = _ACRONYM_THEN_WORD.sub("_", _LOWER_THEN_UPPER.sub("_", name.strip()))
    return split.replace("-", "_").replace(".", "_").lower()


_SPEC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def check_spec_name(owner: str, name: object) -> None:
    """Reject a spec name (or alias) that configuration could not spell reliably.

    The rule is conda's (stripped, one token, compared lower-case) except that
    capitals are kept as written, because the reference's spellings (``LRU``,
    ``IsolatedLRU``, ``skip_l1``) are what users type and what ``lmcache plugins
    list`` shows: a name starts with an ASCII letter and holds only letters,
    digits, ``_`` and ``-``. Lookups go through :func:`normalize_name`, so ``lru``,
    ``LRU`` and ``Lru`` select the same spec.

    Args:
        owner: The spec type, for the message.
        name: The name to check.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: ``name`` breaks the rule (empty, padded, dotted, spaced, ...).
    """
    if not isinstance(name, str):
        raise TypeError(f"{owner}.name must be a string, not {type(name).__name__}")
    if not _SPEC_NAME.fullmatch(name):
        raise ValueError(
            f"{owner} name {name!r} is not valid: start with a letter and use only "
            "letters, digits, '_' and '-' (no spaces or dots)"
        )
