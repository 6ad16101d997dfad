"""Loaded at start-up by a server that ``bench_blend_alternate.py`` starts (via ``PYTHONPATH``).

Installs the ``--alternate`` patch named by ``LMCACHE_BENCH_ALTERNATE`` (a file
defining ``install(switch)``, as ``profile_blend_lookup.py`` takes) and sets its
switch, for each ``cb_unified_lookup``, from the request id's last ``-``-separated
field: odd rounds run patched, even rounds as is. A benchmark tool, never loaded
by the server itself; does nothing without the variable.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any


def _loader() -> Any:
    """``benchmarks/alternate_patch.py``, by path (this directory alone is on the path)."""
    path = Path(__file__).resolve().parent.parent / "alternate_patch.py"
    spec = importlib.util.spec_from_file_location("alternate_patch_loader", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _install(path: str) -> Any:
    loader = _loader()
    switch = loader.Switch()
    loader.load_patch(path).install(switch)

    from lmcache_engine_blend.unified_lookup import UnifiedLookups

    def switched(method: Any) -> Any:
        def call(self: Any, ctx: Any, key: Any, *args: Any) -> Any:
            tail = key.request_id.rsplit("-", 1)[-1]
            switch.on = tail.isdigit() and int(tail) % 2 == 1
            return method(self, ctx, key, *args)

        return call

    for name in ("try_inline", "cb_unified_lookup"):
        setattr(UnifiedLookups, name, switched(getattr(UnifiedLookups, name)))
    return switch


_PATH = os.environ.get("LMCACHE_BENCH_ALTERNATE")
SWITCH = _install(_PATH) if _PATH else None
"""The installed patch's switch (None: no patch named)."""
