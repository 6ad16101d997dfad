"""Which local CUDA device a worker's tensors live on.

The worker names its GPU by UUID (``torch.cuda.get_device_properties(i).uuid``), not by
ordinal: the worker and the server may run with different ``CUDA_VISIBLE_DEVICES``, so
ordinal 0 of one can be ordinal 3 of the other. :func:`ordinal_for_uuid` is the pure
mapping (tested on the CPU); :func:`local_device_uuids` asks torch on a CUDA host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["cuda_available", "local_device_uuids", "normalize_uuid", "ordinal_for_uuid"]


def normalize_uuid(value: str) -> str:
    """A UUID in one spelling: lower case, no ``GPU-`` prefix (nvidia-smi adds one)."""
    text = value.strip().lower()
    return text.removeprefix("gpu-")


def ordinal_for_uuid(device_uuid: str, local_uuids: Sequence[str]) -> int:
    """The local ordinal of the device with this UUID.

    Args:
        device_uuid: The UUID a worker sent (any of torch's or nvidia-smi's spellings).
        local_uuids: This process's visible devices' UUIDs, by ordinal.

    Raises:
        ValueError: No visible device has that UUID (the message lists the visible ones,
            the usual cause being a ``CUDA_VISIBLE_DEVICES`` that hides the worker's GPU).
    """
    wanted = normalize_uuid(device_uuid)
    for ordinal, candidate in enumerate(local_uuids):
        if normalize_uuid(candidate) == wanted:
            return ordinal
    visible = ", ".join(local_uuids) or "none"
    raise ValueError(
        f"the worker's GPU {device_uuid!r} is not visible to this server (visible: {visible}); "
        "check the server's CUDA_VISIBLE_DEVICES"
    )


def cuda_available() -> bool:
    """Whether this process can use a CUDA device."""
    return bool(torch.cuda.is_available())


def local_device_uuids() -> list[str]:
    """The UUIDs of the visible CUDA devices, by ordinal (empty without CUDA)."""
    if not cuda_available():
        return []
    return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
