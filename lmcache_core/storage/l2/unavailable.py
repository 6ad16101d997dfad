"""L2 adapter types whose backend binding this build does not have, and how they fail.

Some adapter types drive native libraries for which this build has no binding
(``aerospike`` today: the Aerospike client, with no server to test it against).
Their configuration models are complete, so their JSON is validated and
documented, but no binding to the library is implemented. They
register as "not implemented yet" (so ``lmcache plugins list`` and ``/status``
say so, and selecting one stops start-up) with a reason that says whether the
library is even installed: without it, the one-line error names the package to
install; with it, the error says the binding is what is missing. The check is
``importlib.util.find_spec`` on the top-level module, which imports nothing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from lmcache_core.errors import PluginNotImplementedError
from lmcache_core.plugin import L2AdapterSpec


@dataclass(frozen=True)
class NativeDependency:
    """The library an adapter type would bind to.

    Attributes:
        module: Top-level module looked up with ``find_spec`` (never imported).
        what: How to name it in a message (``"the Python package 'aerospike'"``).
        install: How to install it (``"pip install aerospike"``).
        alternative: What to use instead today, or empty.
    """

    module: str
    what: str
    install: str
    alternative: str = ""


def is_installed(module: str) -> bool:
    """Whether the top-level ``module`` can be found on ``sys.path`` (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-installed package counts as absent
        return False


def unavailable_reason(adapter: str, dependency: NativeDependency) -> str:
    """Why ``adapter`` cannot run here, in one line, for the current ``sys.path``."""
    if is_installed(dependency.module):
        reason = (
            f"{dependency.what} is installed, but this build has no {adapter} binding for it "
            "(not implemented)"
        )
    else:
        reason = (
            f"needs {dependency.what} ({dependency.install}), which is not installed, and this "
            f"build has no {adapter} binding for it yet"
        )
    return f"{reason}; {dependency.alternative}" if dependency.alternative else reason


def unavailable_factory(adapter: str, dependency: NativeDependency) -> Callable[..., Any]:
    """A factory that always fails with :func:`unavailable_reason`, checked when called.

    The registry refuses to build a "not implemented" spec before it calls the
    factory; this is the second line of defence for code calling it directly.
    """

    def factory(*_args: Any, **_kwargs: Any) -> Any:
        raise PluginNotImplementedError(
            f"L2 adapter {adapter!r} is not implemented yet: "
            f"{unavailable_reason(adapter, dependency)}"
        )

    return factory


def unavailable_adapter_spec(
    name: str,
    *,
    config_model: type[BaseModel],
    description: str,
    dependency: NativeDependency,
) -> L2AdapterSpec:
    """The spec of an adapter type whose binding is missing (see the module docstring)."""
    return L2AdapterSpec(
        name=name,
        factory=unavailable_factory(name, dependency),
        config_model=config_model,
        description=description,
        not_implemented=unavailable_reason(name, dependency),
    )
