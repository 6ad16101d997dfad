"""Test helpers for both NIXL adapters: the skip where NIXL is missing, an S3 server for OBJ.

A test module that needs the real library starts with (before importing anything
that imports NIXL)::

    from lmcache_l2_nixl_store.testing import NIXL_API, NIXL_MISSING

    pytest.importorskip(NIXL_API, reason=NIXL_MISSING)

:class:`NixlObjMotoS3` is :mod:`lmcache_core.testing.moto_s3`'s server that also
writes the OBJ back end's ``backend_params`` for its buckets. This module imports
neither NIXL nor numpy, so it can be imported where they are absent.
"""

from __future__ import annotations

from lmcache_core.testing.moto_s3 import ACCESS_KEY, REGION, SECRET_KEY, MotoS3Server
from lmcache_l2_nixl_store.params import INSTALL_HINT

NIXL_API = "nixl._api"
"""The module of NIXL's Python API that the adapters import."""

NIXL_MISSING = f"NIXL is not installed ({INSTALL_HINT})"
"""The skip reason of a test that needs NIXL, naming how to install it."""


class NixlObjMotoS3(MotoS3Server):
    """moto's S3 server, which also writes NIXL OBJ ``backend_params`` for its buckets."""

    def obj_params(self, bucket: str) -> dict[str, str]:
        """NIXL OBJ ``backend_params`` for ``bucket`` on this server (path-style, plain HTTP)."""
        return {
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "bucket": bucket,
            "endpoint_override": self.url,
            "scheme": "http",
            "region": REGION,
            "use_virtual_addressing": "false",
            "req_checksum": "supported",
        }
