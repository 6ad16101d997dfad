"""Import a third-party object named by module path and attribute, with one-line errors.

Shared by the L2 adapter types that load user code from ``PYTHONPATH``
(``plugin`` and ``native_plugin``): both take ``module_path`` and ``class_name``
from the ``--l2-adapter`` JSON, and both must fail start-up with a message that
says which of the two is wrong and why.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

MODULE_PATTERN = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"
"""A dotted module path, as ``importlib.import_module`` takes it (for config models)."""

IDENTIFIER_PATTERN = r"^[A-Za-z_]\w*$"
"""A Python identifier, such as a class name (for config models)."""


class AdapterLoadError(ValueError):
    """A named module, class or configuration cannot serve as an L2 adapter; says why."""


def import_adapter_module(module_path: str) -> ModuleType:
    """Import ``module_path``.

    Raises:
        AdapterLoadError: The import failed (the cause is in the message).
    """
    try:
        return importlib.import_module(module_path)
    except Exception as exc:  # any import-time failure of user code is a start-up error
        raise AdapterLoadError(f"cannot import {module_path!r}: {exc}") from exc


def load_class(module_path: str, class_name: str) -> tuple[ModuleType, type[Any]]:
    """Import ``module_path`` and return it with its class ``class_name``.

    Raises:
        AdapterLoadError: The module cannot be imported, or has no class of that name.
    """
    module = import_adapter_module(module_path)
    found = getattr(module, class_name, None)
    if not isinstance(found, type):
        what = "no attribute" if found is None else "an attribute that is not a class"
        raise AdapterLoadError(f"{module_path} has {what} {class_name!r}")
    return module, found
