"""Process-wide logging set-up, driven by ``LMCACHE_LOG_LEVEL``."""

from __future__ import annotations

import logging
import os

from lmcache_core.errors import ConfigError

LOG_LEVEL_ENV = "LMCACHE_LOG_LEVEL"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure_logging(default: str = "INFO") -> int:
    """Configure the root logger once from ``LMCACHE_LOG_LEVEL``.

    Returns:
        The numeric level in force.

    Raises:
        ConfigError: The variable holds an unknown level.
    """
    name = os.environ.get(LOG_LEVEL_ENV, default).strip().upper() or default
    if name not in LEVELS:
        raise ConfigError(LOG_LEVEL_ENV, f"must be one of {', '.join(LEVELS)}, got {name!r}")
    level = getattr(logging, name)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    return int(level)
