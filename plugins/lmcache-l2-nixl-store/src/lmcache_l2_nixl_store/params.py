"""``backend_params`` spellings shared by both NIXL adapters, and how to install NIXL.

Nothing heavy is imported here.

Upstream passes ``backend_params`` to NIXL verbatim, as strings, and reads its own
flags from the same dict; the configuration models of both adapters check them
with these helpers, before any NIXL is imported.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

INSTALL_HINT = "pip install --no-deps nixl==1.5.1 nixl-cu12==1.5.1 numpy"
"""How to install NIXL without a CUDA torch (start-up errors and test skips name it)."""

DEFAULT_TRANSFER_TIMEOUT_S = 30.0
"""How long one NIXL transfer may take by default."""
TransferTimeoutS = Annotated[
    float,
    Field(
        gt=0.0,
        allow_inf_nan=False,
        description=(
            "Longest wait for one NIXL transfer; past it the store or load fails (not in "
            "upstream: NIXL's OBJ plugin retries for longer than that while S3 is down)."
        ),
    ),
]
"""The ``transfer_timeout_s`` field of both adapters' configurations."""

TRUE_STRINGS = frozenset({"true", "1"})
"""Spellings of a true ``backend_params`` flag (case-insensitive), as upstream reads them."""
FLAG_STRINGS = TRUE_STRINGS | {"false", "0"}
"""Every accepted spelling of a ``backend_params`` flag."""
FILE_BACKENDS = frozenset({"POSIX", "GDS", "GDS_MT", "HF3FS"})
"""Back ends whose segments are files (``FILE`` memory)."""
OBJECT_BACKENDS = frozenset({"OBJ"})
"""Back ends whose segments are objects (``OBJ`` memory, keyed by name)."""


def parse_flag(value: str) -> bool:
    """A ``backend_params`` flag (``"true"``/``"false"``/``"1"``/``"0"``) as a bool."""
    return value.strip().lower() in TRUE_STRINGS


def check_flag(params: dict[str, str], name: str) -> None:
    """Raise ``ValueError`` unless ``params[name]``, when given, is a flag spelling."""
    if name in params and params[name].strip().lower() not in FLAG_STRINGS:
        raise ValueError(f"backend_params {name} must be 'true' or 'false', not {params[name]!r}")
