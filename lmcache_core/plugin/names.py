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
