"""``--alternate`` patch: the blend prefix leg finds its chain hashes in the token hash cache.

As before stop 26, when the inline unified lookup did not hand the prompt cache's
hashes to ``try_lookup_inline``: while the switch is on, they are dropped and the
core looks them up again from the key's bytes.
"""

from __future__ import annotations

from typing import Any

from lmcache_core.engine.lookup import LookupService


def install(switch: Any) -> None:
    """Patch ``LookupService.try_lookup_inline`` to ignore given hashes while ``switch.on``."""
    original = LookupService.try_lookup_inline

    def try_lookup_inline(
        self: LookupService, ctx: Any, key: Any, tp_size: int, **options: Any
    ) -> None:
        if switch.on:
            options["hashes"] = None
        original(self, ctx, key, tp_size, **options)

    LookupService.try_lookup_inline = try_lookup_inline  # type: ignore[method-assign]
