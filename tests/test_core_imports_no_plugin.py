"""Principle 1: the core imports no plugin, at run time or in its source."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import lmcache_core

CORE_DIR = Path(lmcache_core.__file__).parent


def plugin_packages() -> set[str]:
    """Top-level import packages of every installed plugin distribution."""
    packages = {
        ep.value.split(".")[0].split(":")[0]
        for ep in metadata.entry_points(group="lmcache.plugins")
    }
    packages.add("lmcache_plugins")
    return packages


def test_plugins_are_installed_so_this_test_means_something() -> None:
    assert len(plugin_packages()) > 20


@pytest.mark.slow  # a fresh interpreter imports every core module
def test_importing_every_core_module_imports_no_plugin() -> None:
    script = """
import importlib, json, pkgutil, sys
import lmcache_core
for info in pkgutil.walk_packages(lmcache_core.__path__, "lmcache_core."):
    importlib.import_module(info.name)
from lmcache_core.config.loading import load_config
load_config({"l1_size_gb": "1", "eviction_policy": "LRU"}, plugins=())  # the core's flags only
from lmcache_core.cli.main import build_app
build_app(with_plugin_commands=False)
print(json.dumps(sorted(sys.modules)))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = {name.split(".")[0] for name in json.loads(result.stdout)}
    assert "lmcache_core" in loaded
    assert not loaded & plugin_packages()


def test_core_source_never_names_a_plugin_package() -> None:
    forbidden = plugin_packages()
    offenders = []
    for path in CORE_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path.relative_to(CORE_DIR)}: {n}" for n in names if n.split(".")[0] in forbidden
            ]
    assert offenders == []
