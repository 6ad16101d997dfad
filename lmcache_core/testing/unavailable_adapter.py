"""Checks shared by the tests of L2 adapter types whose backend binding is missing.

An adapter type registered through
:func:`~lmcache_core.storage.l2.unavailable.unavailable_adapter_spec` (``fs_native``,
``nixl_store``, ``aerospike``, ...) has a complete configuration model but no
binding to its library. Its tests all check the same things, which
:class:`UnavailableAdapterChecks` holds: the installed distribution registers
exactly that one spec, marked "not implemented"; the README's examples validate
and it documents every field; a valid configuration validates and each invalid
one is rejected with its field named; the reason names what to install when the
library is missing, and names the missing binding when a module of the library's
name is on ``sys.path``; and a real ``lmcache server`` started with the adapter
exits 1 with exactly one ``error:`` line. Subclass it in a class whose name
starts with ``Test`` and fill in the class attributes::

    import lmcache_l2_mine.plugin
    from lmcache_l2_mine.config import MineAdapterConfig

    from lmcache_core.testing.unavailable_adapter import UnavailableAdapterChecks

    MINIMAL = {"type": "mine", "base_path": "/data/l2"}


    class TestMineUnavailable(UnavailableAdapterChecks):
        adapter = "mine"
        distribution = "lmcache-l2-mine"
        plugin = lmcache_l2_mine.plugin
        dependency = lmcache_l2_mine.plugin.DEPENDENCY
        reason_fragment = "Python package 'mine'"
        config_model = MineAdapterConfig
        readme = Path(__file__).resolve().parents[1] / "README.md"
        valid_config = MINIMAL
        invalid_configs = [({**MINIMAL, "base_path": ""}, "base_path")]

The base class's name does not start with ``Test``, so pytest does not collect it
where it is imported; the subclass inherits every ``test_*`` method, and its
``invalid_configs`` become one ``test_rejects`` case each.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from lmcache_core.errors import PluginNotImplementedError
from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT
from lmcache_core.storage.l2.unavailable import NativeDependency, is_installed
from lmcache_core.testing.plugin_checks import (
    assert_config_rejects,
    assert_pending_plugin,
    assert_readme_configures,
)

SERVER_TIMEOUT_S = 60.0
"""The longest a refused server start may take before the check fails."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_refused_server(adapter_config: Mapping[str, Any]) -> subprocess.CompletedProcess[str]:
    """Start a real ``lmcache server`` with one ``--l2-adapter`` and wait for it to exit.

    The server runs in strict plugin mode, on free ports, without any ``LMCACHE_*``
    variable of the calling environment (which could change what it loads).

    Args:
        adapter_config: The adapter's ``--l2-adapter`` JSON object.

    Returns:
        The finished process, stderr merged into stdout.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("LMCACHE_")}
    env["LMCACHE_PLUGINS_STRICT"] = "1"
    command = [sys.executable, "-c", "from lmcache_core.cli.main import main; main()", "server"]
    return subprocess.run(
        [
            *command,
            *("--l1-size-gb", "0.05", "--eviction-policy", "LRU", "--host", "127.0.0.1"),
            *("--port", str(free_port()), "--http-host", "127.0.0.1"),
            *("--http-port", str(free_port()), "--l2-adapter", json.dumps(adapter_config)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=SERVER_TIMEOUT_S,
        check=False,
    )


class UnavailableAdapterChecks:
    """The checks of an adapter type without a binding; subclass in a ``Test*`` class.

    Attributes:
        adapter: The adapter type, as ``--l2-adapter`` spells it (``"aerospike"``).
        distribution: The distribution that registers it (``"lmcache-l2-aerospike"``).
        plugin: The module whose ``lmcache_register_l2_adapters`` hook registers it.
        dependency: The library a binding would use (the plugin's own record).
        reason_fragment: Text the "not implemented" reason must contain whether or
            not the library is installed, written out (not taken from ``dependency``)
            so that the message users read is pinned.
        config_model: The adapter's configuration model.
        readme: The distribution's README, whose ``--l2-adapter`` examples must validate.
        valid_config: A configuration the model accepts; the server check starts with it.
        invalid_configs: ``(configuration, field)`` pairs the model must reject with
            ``field`` named; each is its own ``test_rejects`` case.
    """

    adapter: ClassVar[str]
    distribution: ClassVar[str]
    plugin: ClassVar[ModuleType]
    dependency: ClassVar[NativeDependency]
    reason_fragment: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]
    readme: ClassVar[Path]
    valid_config: ClassVar[Mapping[str, Any]]
    invalid_configs: ClassVar[Sequence[tuple[Mapping[str, Any], str]]]

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Make one ``test_rejects`` case of each of :attr:`invalid_configs`."""
        if metafunc.function.__name__ != "test_rejects":
            return
        cases = list(self.invalid_configs)
        assert cases, f"{type(self).__name__}.invalid_configs is empty"
        metafunc.parametrize(
            ("data", "field"),
            cases,
            ids=[f"{index}-{field}" for index, (_, field) in enumerate(cases)],
        )

    def own_spec(self) -> L2AdapterSpec:
        """The one spec the plugin's hook registers now (its reason reflects ``sys.path``)."""
        specs = self.plugin.lmcache_register_l2_adapters()
        assert [spec.name for spec in specs] == [self.adapter], (
            f"{self.plugin.__name__} registers {[spec.name for spec in specs]}, "
            f"not [{self.adapter!r}]"
        )
        [spec] = specs
        assert isinstance(spec, L2AdapterSpec)
        assert spec.not_implemented, f"{self.adapter!r} is not marked not implemented"
        return spec

    def test_registered_and_pending(self) -> None:
        """The installed distribution registers only this spec, pending, with its config model."""
        spec = assert_pending_plugin(
            PluginKind.L2_ADAPTER, self.adapter, self.distribution, self.reason_fragment
        )
        assert isinstance(spec, L2AdapterSpec)
        assert spec.config_model is self.config_model

    def test_readme_examples_validate_and_fields_are_documented(self) -> None:
        """Every README example validates and the README names every field."""
        assert_readme_configures(self.config_model, self.readme)

    def test_valid_config_validates(self) -> None:
        """The model accepts :attr:`valid_config` as this adapter type."""
        config = self.config_model.model_validate(self.valid_config)
        assert getattr(config, "type", None) == self.adapter

    def test_rejects(self, data: Mapping[str, Any], field: str) -> None:
        """The model rejects one of :attr:`invalid_configs`, naming its field."""
        assert_config_rejects(self.config_model, data, field)

    def test_without_the_library_the_reason_names_what_to_install(self) -> None:
        """Without the library, the reason and the factory's error say what to install."""
        module = self.dependency.module
        if is_installed(module):
            pytest.skip(f"{module} is installed here; the stand-in module test covers that case")
        spec = self.own_spec()
        text = spec.not_implemented or ""
        assert text.startswith(
            f"needs {self.dependency.what} ({self.dependency.install}), which is not installed"
        ), text
        assert "binding" in text
        assert self.reason_fragment in text
        with pytest.raises(PluginNotImplementedError, match="which is not installed"):
            spec.factory(spec.config_model.model_construct(), DEFAULT_L2_ADAPTER_CONTEXT)

    def test_with_the_library_installed_the_missing_binding_is_the_reason(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a module of the library's name, the reason is the missing binding."""
        # A module of that name on sys.path: find_spec finds it (and nothing imports it).
        module = self.dependency.module
        imported_before = module in sys.modules  # e.g. by another adapter's tests in this run
        (tmp_path / f"{module}.py").write_text("raise ImportError('never imported')\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        spec = self.own_spec()
        text = spec.not_implemented or ""
        assert text.startswith(
            f"{self.dependency.what} is installed, but this build has no {self.adapter} binding"
        ), text
        assert "pip install" not in text
        assert self.reason_fragment in text
        with pytest.raises(PluginNotImplementedError, match="is installed, but"):
            spec.factory(spec.config_model.model_construct(), DEFAULT_L2_ADAPTER_CONTEXT)
        assert imported_before or module not in sys.modules

    @pytest.mark.slow  # a real server process: seconds of imports
    def test_a_server_with_it_exits_with_one_error_line(self) -> None:
        """A real server started with :attr:`valid_config` exits 1 with the reason, once."""
        result = run_refused_server(self.valid_config)
        assert result.returncode == 1, result.stdout
        errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: --l2-adapter #1: l2_adapter {self.adapter!r} is not implemented yet: "
            f"{self.own_spec().not_implemented}"
        ], result.stdout
        assert "Traceback" not in result.stdout
