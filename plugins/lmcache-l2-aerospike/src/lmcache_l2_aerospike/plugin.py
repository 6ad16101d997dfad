"""Registers the L2 adapter ``aerospike`` with the LMCache server.

The configuration model is complete, but this build has no binding to the library
the adapter drives: it is listed as not implemented, with a reason that says
whether the library is installed (see :mod:`lmcache_core.storage.l2.unavailable`)
and why there is no binding. A binding is only worth shipping once it can be
tested against a real server, and none can be installed on the project's
machines (no Debian, PyPI or npm package ships ``asd``; no container images).
"""

from __future__ import annotations

from lmcache_core.plugin import L2AdapterSpec, hookimpl
from lmcache_core.storage.l2.unavailable import NativeDependency, unavailable_adapter_spec
from lmcache_l2_aerospike.config import AerospikeAdapterConfig

NO_SERVER = (
    "no Aerospike server can run where this project is tested, so no binding ships "
    "(see the lmcache-l2-aerospike README); use resp or s3 for a shared L2"
)
"""Why there is no binding, appended to the refusal so that the one line says it."""

DEPENDENCY = NativeDependency(
    module="aerospike",
    what="the Python package 'aerospike'",
    install="pip install aerospike",
    alternative=NO_SERVER,
)
"""The library a binding would use; whether it is installed shapes the start-up error."""


@hookimpl
def lmcache_register_l2_adapters() -> list[L2AdapterSpec]:
    """Register the L2 adapter ``aerospike``.

    Returns:
        Its one spec, marked not implemented; building it raises with the reason.
    """
    return [
        unavailable_adapter_spec(
            "aerospike",
            config_model=AerospikeAdapterConfig,
            description="An Aerospike cluster through the native connector.",
            dependency=DEPENDENCY,
        )
    ]
