"""The objects that a compat test and its upstream driver both derive from an index.

Each side computes the same keys' bytes, so each can check what the other wrote.
Imported by the tests (``tests.compat.compat_objects``) and by the drivers, which
run as scripts under upstream's interpreter and find it beside them
(``compat_objects``): it uses the standard library only.
"""

from __future__ import annotations

import hashlib

NIXL_PAGE = 4096
"""The page of the NIXL pools in the NIXL compat tests."""
NIXL_MODEL = "compat/nixl-model"
"""The model name of the NIXL compat tests' keys."""


def payload_of(index: int, size: int) -> bytes:
    """``size`` bytes of object ``index``: its SHA-256 block repeated."""
    block = hashlib.sha256(b"payload:%d" % index).digest()
    return (block * (size // len(block) + 1))[:size]


def nixl_object_of(index: int) -> tuple[bytes, str, int, bytes]:
    """``(chunk_hash, model, size, payload)`` of NIXL compat object ``index`` (1 to 3 pages)."""
    chunk_hash = hashlib.sha256(b"nixl-compat:%d" % index).digest()
    size = NIXL_PAGE * (1 + index % 3)
    return chunk_hash, NIXL_MODEL, size, payload_of(index, size)
