"""Registers the observability subscriber ``lookup_hash_log`` with the LMCache server."""

from __future__ import annotations

from typing import Any

from lmcache_core.plugin import SubscriberCategory, SubscriberSpec, hookimpl, pending_factory

REASON = "lands with the observability issue (#5)"
"""Why it cannot be built yet."""


def lookup_hash_log_enabled(config: Any) -> bool:
    """Whether the server configuration asks for the lookup-hash log.

    Args:
        config: The server configuration.

    Returns:
        True when ``--lookup-hash-log-dir`` is set (an empty directory means off).
    """
    return bool(config.lookup_hash_log.lookup_hash_log_dir)


@hookimpl
def lmcache_register_subscribers() -> list[SubscriberSpec]:
    """Register the observability subscriber ``lookup_hash_log``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        SubscriberSpec(
            name="lookup_hash_log",
            factory=pending_factory("observability subscriber 'lookup_hash_log'", REASON),
            category=SubscriberCategory.LOGGING,
            enabled_when=lookup_hash_log_enabled,
            description="Rotating JSONL files of the chunk hashes of every lookup.",
            not_implemented=REASON,
        )
    ]
