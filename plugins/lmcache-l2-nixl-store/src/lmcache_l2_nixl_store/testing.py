"""What the tests of both NIXL adapters need to skip, saying why, where NIXL is missing.

A test module that needs the real library starts with (before importing anything
that imports NIXL)::

    from lmcache_l2_nixl_store.testing import NIXL_API, NIXL_MISSING

    pytest.importorskip(NIXL_API, reason=NIXL_MISSING)

This module imports neither NIXL nor numpy, so it can be imported where they are
absent.
"""

from __future__ import annotations

from lmcache_l2_nixl_store.params import INSTALL_HINT

NIXL_API = "nixl._api"
"""The module of NIXL's Python API that the adapters import."""

NIXL_MISSING = f"NIXL is not installed ({INSTALL_HINT})"
"""The skip reason of a test that needs NIXL, naming how to install it."""
