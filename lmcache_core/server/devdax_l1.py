"""``--l1-devdax-path``: the L1 arena in a Device-DAX device or file, and its overflow rule.

The reference's rules, checked here (``--no-l1-use-lazy``, ``--shm-name ""`` and
no ``--gds-l1-path`` are checked by the configuration itself):

* the arena is ``--l1-size-gb`` of the DAX mapping;
* if a ``dax`` L2 adapter names the same device (its single ``device_path``), the
  device leaves L2 and becomes L1 overflow: L1 is then ``--l1-size-gb`` of DRAM
  followed by that adapter's ``max_dax_size_gb`` of the device, DRAM used first,
  and the adapter is not built;
* a ``dax`` adapter whose ``devices`` list holds the L1 device among others is
  refused (it would have to be split), as is one that lends the device twice.

The core imports no plugin: the adapter's validated configuration is read through
its JSON dump (``device_path``, ``max_dax_size_gb``, ``devices``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from lmcache_core.config.resolution import ResolvedAdapter, Selection
from lmcache_core.config.server import ServerConfig
from lmcache_core.errors import StartupError

GIB = 1 << 30
DAX_ADAPTER = "dax"


@dataclass(frozen=True)
class DevdaxPlan:
    """How the DAX L1 is laid out.

    Attributes:
        path: The device or file.
        dram_bytes: Bytes of DRAM before the DAX part (0 without a lending adapter).
        dax_bytes: Bytes of the device mapped.
        lender: The ``dax`` adapter whose device became L1 overflow, or None.
    """

    path: str
    dram_bytes: int
    dax_bytes: int
    lender: ResolvedAdapter | None = None

    @property
    def total_bytes(self) -> int:
        """DRAM plus DAX."""
        return self.dram_bytes + self.dax_bytes


def _same_path(first: str, second: str) -> bool:
    return os.path.realpath(first) == os.path.realpath(second)


def _lent_size(resolved: ResolvedAdapter, path: str) -> float | None:
    """The GiB a ``dax`` adapter lends from ``path``, or None if it does not use it.

    Raises:
        StartupError: The adapter lists ``path`` together with other devices.
    """
    dump: dict[str, Any] = resolved.config.model_dump()
    if dump.get("device_path") is not None:
        if _same_path(str(dump["device_path"]), path):
            return float(dump["max_dax_size_gb"])
        return None
    devices = dump.get("devices") or []
    if any(_same_path(str(device["device_path"]), path) for device in devices):
        raise StartupError(
            f"--l1-devdax-path: --l2-adapter #{resolved.index} (dax) lists {path} among "
            f"{len(devices)} devices; to lend it to L1 as overflow, give it to a dax "
            "adapter of its own as device_path with max_dax_size_gb"
        )
    return None


def plan_devdax_l1(config: ServerConfig, selection: Selection) -> DevdaxPlan | None:
    """The DAX L1 of ``config``, or None without ``--l1-devdax-path``.

    Raises:
        StartupError: Two ``dax`` adapters lend the device, or one lists it among
            others (the message names the flag and the adapter).
    """
    path = config.l1.l1_devdax_path
    if path is None:
        return None
    capacity = int(config.l1.l1_size_gb * GIB) + config.l1.l1_align_bytes
    lenders: list[tuple[ResolvedAdapter, float]] = []
    for resolved in selection.adapters:
        if resolved.spec.name != DAX_ADAPTER:
            continue
        size = _lent_size(resolved, path)
        if size is not None:
            lenders.append((resolved, size))
    if len(lenders) > 1:
        indexes = ", ".join(f"#{resolved.index}" for resolved, _ in lenders)
        raise StartupError(
            f"--l1-devdax-path: dax adapters {indexes} all name {path}; only one may lend "
            "it to L1 as overflow"
        )
    if not lenders:
        return DevdaxPlan(path, 0, capacity)
    resolved, size_gb = lenders[0]
    return DevdaxPlan(path, capacity, int(size_gb * GIB), resolved)


def without_lender(selection: Selection, plan: DevdaxPlan | None) -> Selection:
    """``selection`` without the ``dax`` adapter whose device became L1 overflow."""
    if plan is None or plan.lender is None:
        return selection
    lender = plan.lender
    return dataclasses.replace(
        selection, adapters=[resolved for resolved in selection.adapters if resolved is not lender]
    )
