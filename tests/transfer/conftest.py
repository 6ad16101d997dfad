"""Fixtures of the transfer tests: unique shared-memory names that never outlive a test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture
def shm_names() -> Iterator[Callable[[], str]]:
    """A factory of unique /dev/shm names; whatever a test leaves behind is unlinked."""
    made: list[str] = []

    def make() -> str:
        name = f"lmcache_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
        made.append(name)
        return name

    yield make
    for name in made:
        path = os.path.join("/dev/shm", name)
        if os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
