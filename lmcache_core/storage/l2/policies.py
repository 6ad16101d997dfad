"""What the L2 store and prefetch policy plugins decide.

``--l2-store-policy`` plugins build a :class:`StorePolicy`, ``--l2-prefetch-policy``
plugins a :class:`PrefetchPolicy`; the factories take no arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from lmcache_core.storage.keys import ObjectKey


@runtime_checkable
class StorePolicy(Protocol):
    """Which adapters receive newly stored keys, and whether L1 keeps them."""

    keep_in_l1: bool
    """False: delete a key from L1 once every target adapter stored it (buffer mode)."""

    def targets(self, adapter_count: int) -> Sequence[int]:
        """Indices (cascade order) of the adapters that receive every new key."""
        ...


@runtime_checkable
class AdmittingStorePolicy(StorePolicy, Protocol):
    """A :class:`StorePolicy` that also picks which new keys go to L2 at all.

    The store controller calls :meth:`admit` (from its one thread) with each batch
    of keys just committed to L1, before anything is written; only the admitted
    keys are stored (the others stay in L1 only, counted as ``not_admitted``).
    """

    def admit(self, keys: Sequence[ObjectKey]) -> Sequence[bool]:
        """One flag per key: True to store it to the target adapters."""
        ...


@runtime_checkable
class PrefetchPolicy(Protocol):
    """Which adapter an L2 hit is loaded from, and whether the L1 copy stays."""

    temporary: bool
    """True: the loaded L1 copy is freed once its last reader is done."""

    def choose(self, holders: Sequence[int]) -> int:
        """One of ``holders`` (indices of the adapters that have the key, cascade order)."""
        ...
