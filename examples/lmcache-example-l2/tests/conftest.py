"""Make the example importable when it is tested without being installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
"""The example's source folder (also put on the server subprocess's PYTHONPATH)."""

if importlib.util.find_spec("lmcache_example_l2") is None:
    sys.path.insert(0, str(SRC))
