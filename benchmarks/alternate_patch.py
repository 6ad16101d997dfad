"""What an ``--alternate`` patch file is given, and how it is loaded.

Shared by ``profile_blend_lookup.py --alternate`` (in-process) and
``live_alternate/sitecustomize.py`` (inside a live server, loaded there by path:
nothing heavier than the standard library may be imported here).
"""

from __future__ import annotations

import importlib.util
from typing import Any


class Switch:
    """What a patch reads: patched behaviour while :attr:`on`."""

    on = False


def load_patch(path: str) -> Any:
    """The patch file as a module (it defines ``install(switch)``)."""
    spec = importlib.util.spec_from_file_location("alternate_patch", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
