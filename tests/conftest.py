"""Test-suite set-up shared by every core test."""

from __future__ import annotations

import os

# Strict plugin loading in every test and every server the tests start: a broken
# plugin fails loudly instead of being skipped.
os.environ.setdefault("LMCACHE_PLUGINS_STRICT", "1")
