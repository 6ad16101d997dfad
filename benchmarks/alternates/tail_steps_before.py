"""``--alternate`` patch: a based prompt's tail and the end event as before stop 28.

While the switch is on (each part can be left out with
``LMCACHE_ALTERNATE_PARTS``, a comma-separated subset of the names below):

* ``needle``: :func:`~lmcache_engine_blend.token_decode.decode_after` finds the
  shared tokens with a Python int needle, as before, so numpy casts the ends to
  int64 first (the switch hands it ends whose ``searchsorted`` does that).
* ``rolling``: :meth:`~lmcache_engine_blend.fingerprint.FingerprintIndex.rolling`
  is the former code: prefix sums concatenated behind a zero under ``errstate``.
* ``logged``: the unified lookup's end event builds its ``segments`` field from
  the segments each time instead of taking the inline plan's.

The screen's and the match's ``searchsorted``/``nonzero`` method calls (in
place of numpy's module functions) are not switched.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from lmcache_engine_blend import prompt_cache, token_decode
from lmcache_engine_blend.fingerprint import FingerprintIndex, TokenIds, Tokens
from lmcache_engine_blend.unified_lookup import UnifiedLookups

PARTS = ("needle", "rolling", "logged")


class _IntNeedleEnds(np.ndarray):
    """Ends whose ``searchsorted`` takes the needle as a Python int (the former cast)."""

    def searchsorted(self, v: Any, side: Any = "left", sorter: Any = None) -> Any:
        return np.searchsorted(self.view(np.ndarray), int(v), side=side)


class _Covering:
    def __init__(self, ends: Any) -> None:
        self.ends = ends

    def covering(self, nbytes: int) -> Any:
        return self.ends.covering(nbytes).view(_IntNeedleEnds)


def _rolling_before(self: FingerprintIndex, tokens: TokenIds) -> Tokens:
    size, n = self.chunk_size, len(tokens)
    if n < size:
        return np.empty(0, dtype=np.uint64)
    up, down = self._powers.upto(n)
    with np.errstate(over="ignore"):
        sums = np.concatenate(
            (np.zeros(1, dtype=np.uint64), np.cumsum(tokens * down[:n], dtype=np.uint64))
        )
        return up[size - 1 : n] * (sums[size:] - sums[: n - size + 1])


def install(switch: Any) -> None:
    """Patch the parts named in ``LMCACHE_ALTERNATE_PARTS`` (default: all) to switch."""
    wanted = os.environ.get("LMCACHE_ALTERNATE_PARTS", ",".join(PARTS)).split(",")
    unknown = set(wanted) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    if "needle" in wanted:
        decode_after = token_decode.decode_after

        def switched_decode(raw: bytes, base: bytes, base_ids: Any, base_ends: Any) -> Any:
            ends: Any = _Covering(base_ends) if switch.on else base_ends
            return decode_after(raw, base, base_ids, ends)

        setattr(prompt_cache, "decode_after", switched_decode)  # noqa: B010 - not re-exported
    if "rolling" in wanted:
        rolling = FingerprintIndex.rolling

        def switched_rolling(self: FingerprintIndex, tokens: TokenIds) -> Tokens:
            return _rolling_before(self, tokens) if switch.on else rolling(self, tokens)

        FingerprintIndex.rolling = switched_rolling  # type: ignore[method-assign]
    if "logged" in wanted:
        publish_end = UnifiedLookups._publish_end

        def switched_publish(self: UnifiedLookups, *args: Any, **kwargs: Any) -> None:
            if switch.on:
                kwargs["logged"] = None
            publish_end(self, *args, **kwargs)

        UnifiedLookups._publish_end = switched_publish  # type: ignore[method-assign]
