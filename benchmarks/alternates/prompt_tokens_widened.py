"""``--alternate`` patch: a prompt's tokens widened to uint64, as before stop 27.

While the switch is on, :class:`~lmcache_engine_blend.fingerprint.Prompt` gets a
uint64 copy of the uint32 tokens the prompt cache decoded (what
``astype(np.uint64)`` did there before).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lmcache_engine_blend.fingerprint import Prompt


def install(switch: Any) -> None:
    """Patch ``Prompt.__init__`` to widen uint32 tokens while ``switch.on``."""
    original = Prompt.__init__

    def init(self: Prompt, tokens: Any, chunk_size: int) -> None:
        if switch.on and tokens.dtype == np.uint32:
            tokens = tokens.astype(np.uint64)
        original(self, tokens, chunk_size)

    Prompt.__init__ = init  # type: ignore[method-assign,unused-ignore]
