"""Plugins and examples import only the public modules docs/plugins.md lists.

ruff's TID251 bans the internal modules at lint time; this test checks the other direction:
every core module a plugin imports (TYPE_CHECKING imports included) is documented as public,
and every internal module the docs name is banned in pyproject.toml.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "plugins.md").read_text()


def section(title: str) -> str:
    start = DOCS.index(f"## {title}\n")
    end = DOCS.find("\n## ", start + 1)
    return DOCS[start : end if end != -1 else None]


def public_prefixes() -> list[str]:
    """The modules of the docs' table (``config.x`` is short for ``lmcache_core.config.x``)."""
    prefixes: list[str] = []
    for row in section("What a plugin may import").splitlines():
        if not row.startswith("| `lmcache_core"):
            continue
        cell = row.split("|")[1]
        for name in re.findall(r"`([a-z0-9_.]+)`", cell):
            prefixes.append(name if name.startswith("lmcache_core") else f"lmcache_core.{name}")
    return prefixes


def imported_core_modules() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for pattern in ("plugins/*/src/**/*.py", "examples/*/src/**/*.py"):
        for path in ROOT.glob(pattern):
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    if name.startswith("lmcache_core"):
                        found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def is_public(module: str, prefixes: list[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_scan_sees_the_plugins() -> None:
    modules = imported_core_modules()
    assert len(modules) > 20  # plugins import many core modules: the check means something
    assert "lmcache_core.plugin" in modules


def test_every_core_module_a_plugin_imports_is_public() -> None:
    prefixes = public_prefixes()
    assert "lmcache_core.engine" in prefixes and "lmcache_core.config.l2_adapter" in prefixes
    private = {
        m: paths for m, paths in imported_core_modules().items() if not is_public(m, prefixes)
    }
    assert private == {}


def test_every_internal_module_the_docs_name_is_banned_by_ruff() -> None:
    text = section("What a plugin may import")
    internal_line = text[text.index("Internal (banned):") :]
    names = re.findall(r"`([a-z0-9_.]+)`", internal_line)
    internal = {n if n.startswith("lmcache_core.") else f"lmcache_core.{n}" for n in names}
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    banned = set(config["tool"]["ruff"]["lint"]["flake8-tidy-imports"]["banned-api"])
    assert internal == banned
    prefixes = public_prefixes()
    assert not [m for m in banned if is_public(m, prefixes)]
