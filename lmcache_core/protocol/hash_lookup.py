"""The ``get_experimental`` entry by which a server offers hash-carrying lookups.

``lookup_hashes:<algorithm>:<chunk size>``: the server serves ``lookup_hashes``
(:class:`~lmcache_core.protocol.types.HashLookupKey`) for keys hashed with
``<algorithm>`` in chunks of ``<chunk size>`` tokens. It is listed only when the
engine does not need the tokens themselves. Upstream's servers never list it,
so our client sends them the token form. docs/protocol.md, "Hash-carrying lookups".
"""

from __future__ import annotations

from collections.abc import Iterable

HASH_LOOKUP_CAPABILITY = "lookup_hashes"


def hash_lookup_capability(algorithm: str, chunk_size: int) -> str:
    """The entry a server lists for its ``--hash-algorithm`` and ``--chunk-size``."""
    return f"{HASH_LOOKUP_CAPABILITY}:{algorithm}:{chunk_size}"


def parse_hash_lookup_capability(listed: Iterable[object]) -> tuple[str, int] | None:
    """``(algorithm, chunk size)`` from a ``get_experimental`` reply, None if not offered."""
    for entry in listed:
        if not isinstance(entry, str):
            continue
        name, _, rest = entry.partition(":")
        algorithm, _, size = rest.partition(":")
        if name == HASH_LOOKUP_CAPABILITY and algorithm and size.isdigit() and int(size) > 0:
            return algorithm, int(size)
    return None
