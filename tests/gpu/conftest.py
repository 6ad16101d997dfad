"""GPU tests: everything here needs a CUDA device and is skipped without one, saying why."""

from __future__ import annotations

import pytest
import torch

NO_CUDA = "needs a CUDA device (run tools/device_check.sh on a GPU host)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``gpu``; skip them all without CUDA."""
    for item in items:
        if "tests/gpu/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason=NO_CUDA))
