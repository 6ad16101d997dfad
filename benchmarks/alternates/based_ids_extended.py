"""``--alternate`` patch: a based list's tokens built by slice-then-extend, as before stop 27.

While the switch is on, :func:`~lmcache_engine_blend.token_decode.decode_after`
gets the base's tokens wrapped so that ``base_ids[:shared] + rest`` slices and
then extends in place (the array grows and is copied once more), what it did
before building the array at its final size.
"""

from __future__ import annotations

import array
from typing import Any

from lmcache_engine_blend import prompt_cache, token_decode


class _Extending:
    def __init__(self, part: array.array[int]) -> None:
        self.part = part

    def __add__(self, rest: array.array[int]) -> array.array[int]:
        self.part.extend(rest)
        return self.part


class _Sliced:
    def __init__(self, ids: array.array[int]) -> None:
        self.ids = ids

    def __getitem__(self, key: slice) -> _Extending:
        return _Extending(self.ids[key])


def install(switch: Any) -> None:
    """Patch the prompt cache's ``decode_after`` to slice and extend while ``switch.on``."""
    original = token_decode.decode_after

    def decode_after(raw: bytes, base: bytes, base_ids: Any, base_ends: Any) -> Any:
        ids: Any = _Sliced(base_ids) if switch.on else base_ids
        return original(raw, base, ids, base_ends)

    setattr(prompt_cache, "decode_after", decode_after)  # noqa: B010 - not re-exported there
