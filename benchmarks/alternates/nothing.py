"""``--alternate`` patch that changes nothing: the A/A run that shows a tool's own spread."""

from __future__ import annotations

from typing import Any


def install(switch: Any) -> None:
    """Patch nothing (both halves of the run execute the same code)."""
    del switch
