"""Registers the observability subscriber ``lookup_hash_log`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.errors import StartupError
from lmcache_core.observability.subscribers import SubscriberContext
from lmcache_core.plugin import SubscriberCategory, SubscriberSpec, hookimpl
from lmcache_obs_lookup_hash_log.settings import LookupHashLogSettings, lookup_hash_log_enabled
from lmcache_obs_lookup_hash_log.subscriber import LookupHashLogSubscriber
from lmcache_obs_lookup_hash_log.writer import RotatingJsonlWriter


def build_lookup_hash_log(context: SubscriberContext) -> LookupHashLogSubscriber:
    """The factory: a subscriber writing to ``--lookup-hash-log-dir``.

    Args:
        context: The subscriber context (the plugin's Lookup Hash Logging settings).

    Returns:
        The subscriber, its directory created and checked.

    Raises:
        StartupError: The directory cannot be created or written.
    """
    options = context.config.plugin_settings(LookupHashLogSettings)
    try:
        writer = RotatingJsonlWriter(
            options.lookup_hash_log_dir,
            rotation_interval_s=options.lookup_hash_log_rotation_interval,
            max_size=options.lookup_hash_log_rotation_max_size,
            max_files=options.lookup_hash_log_max_files,
        )
    except OSError as exc:
        raise StartupError(f"--lookup-hash-log-dir: {exc}") from exc
    return LookupHashLogSubscriber(writer)


@hookimpl
def lmcache_register_subscribers() -> list[SubscriberSpec]:
    """Register the observability subscriber ``lookup_hash_log``.

    Returns:
        Its one spec; it runs only when ``--lookup-hash-log-dir`` is set.
    """
    return [
        SubscriberSpec(
            name="lookup_hash_log",
            factory=build_lookup_hash_log,
            category=SubscriberCategory.LOGGING,
            enabled_when=lookup_hash_log_enabled,
            config_model=LookupHashLogSettings,
            description="Rotating JSONL files of the chunk hashes of every lookup.",
        )
    ]
