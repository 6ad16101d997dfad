"""Fixtures of the default engine's unit tests: an engine over a shared or a private L1."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The tests import their helpers from default_engine_rig, next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from default_engine_rig import Rig, close_rig, make_rig


@pytest.fixture
def rig() -> Iterator[Rig]:
    """An engine over a shared-memory L1 (the pool transport), both transfer modes."""
    made = make_rig()
    yield made
    close_rig(made)


@pytest.fixture
def inline_rig() -> Iterator[Rig]:
    """An engine over a private L1 (objects travel inline)."""
    made = make_rig(shared=False)
    yield made
    close_rig(made)
