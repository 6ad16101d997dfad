"""Make the plugin importable when it is tested without being installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("lmcache_eviction_arc") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
