"""Tests of the lmcache-engine-default plugin distribution's registration.

Its behaviour is tested end to end against a real server in tests/data_path/.
"""

from __future__ import annotations

from lmcache_engine_default.settings import DefaultEngineSettings

from lmcache_core.plugin import EngineSpec, PluginKind
from lmcache_core.plugin.registry import PluginRegistry


def test_registered_and_implemented() -> None:
    registry = PluginRegistry(strict=True)
    spec = registry.resolve(PluginKind.ENGINE, "default")
    assert isinstance(spec, EngineSpec)
    assert registry.owner(spec).distribution == "lmcache-engine-default"
    assert spec.not_implemented is None
    assert spec.transfer_modes == {"lmcache_driven", "engine_driven", "auto"}
    assert spec.config_model is DefaultEngineSettings


def test_registering_does_not_import_the_engine() -> None:
    import subprocess
    import sys

    script = (
        "import sys; from lmcache_core.plugin.registry import PluginRegistry; PluginRegistry(); "
        "print('lmcache_engine_default.engine' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
