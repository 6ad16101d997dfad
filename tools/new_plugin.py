"""Generate a working plugin distribution: ``tools/new_plugin.py KIND NAME``.

Every name is derived from the two arguments, so nothing needs renaming by hand::

    python tools/new_plugin.py eviction_policy my_fifo
    # plugins/lmcache-eviction-my-fifo/       folder = distribution name
    #   src/lmcache_eviction_my_fifo/         import package
    #   entry point eviction_my_fifo          in the lmcache.plugins group
    #   spec name my_fifo                     what configuration selects

The folder holds a pyproject (core pinned to a compatible range), a README, the
implementation (a small one that works: :mod:`plugin_skeletons`), its
registration and tests that load it through the registry from the entry point
the pyproject declares. Then ``pip install -e plugins/<folder>``; to make it
part of the default set, also run ``python tools/sync_plugins.py``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# tools/ is not a package: its sibling module is imported by path.
from plugin_skeletons import SKELETONS, Skeleton

REPO_ROOT = Path(__file__).resolve().parents[1]
CORE_RANGE = "lmcache-core>=0.1,<1"
"""Hooks change only between major versions of the core."""
NAME = re.compile(r"[a-z][a-z0-9_]*")


class NewPluginError(Exception):
    """The arguments cannot make a plugin, or the folder exists."""


def derived_names(skeleton: Skeleton, name: str) -> dict[str, str]:
    """Folder/distribution, import package and entry point of plugin ``name``."""
    prefix = skeleton.prefix.replace("-", "_")
    return {
        "name": name,
        "distribution": f"lmcache-{skeleton.prefix}-{name.replace('_', '-')}",
        "package": f"lmcache_{prefix}_{name}",
        "entry_point": f"{prefix}_{name}",
        "title": name.replace("_", " "),
    }


def render(skeleton: Skeleton, names: dict[str, str]) -> dict[str, str]:
    """The files of the plugin, by path relative to its folder."""
    package = names["package"]
    pyproject = f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{names["distribution"]}"
version = "0.1.0"
description = "LMCache server plugin ({skeleton.spec} '{names["name"]}')."
readme = "README.md"
license = "Apache-2.0"
requires-python = ">=3.11"
dependencies = ["{CORE_RANGE}"]

[project.entry-points."lmcache.plugins"]
{names["entry_point"]} = "{package}.plugin"

[tool.hatch.build.targets.wheel]
packages = ["src/{package}"]
"""
    core_names = [skeleton.spec]
    if "SubscriberCategory" in skeleton.spec_extra:
        core_names.append("SubscriberCategory")
    plugin_imports = ", ".join([*sorted(core_names), "hookimpl"])
    plugin_import_block = "\n".join(
        sorted(
            [
                f"from lmcache_core.plugin import {plugin_imports}",
                f"from {package}.implementation import {skeleton.factory}",
            ]
        )
    )
    description = f"{names['title'].capitalize()}: describe it in one line."
    test_lines = skeleton.test.splitlines()
    own_imports = [line for line in test_lines if line.startswith(("from ", "import "))]
    test_body = "\n".join(line for line in test_lines if line not in own_imports).lstrip("\n")
    core_imports = sorted(
        [
            f"from lmcache_core.plugin import {', '.join(sorted([skeleton.spec, 'PluginKind']))}",
            "from lmcache_core.plugin.registry import ENTRY_POINT_GROUP, PluginRegistry",
            *own_imports,
        ]
    )
    plugin = f'''"""Registers ``{names["name"]}`` with the LMCache server."""

from __future__ import annotations

{plugin_import_block}


@hookimpl
def {skeleton.hook}() -> list[{skeleton.spec}]:
    """Register ``{names["name"]}``.

    Returns:
        Its one spec.
    """
    return [
        {skeleton.spec}(
            name="{names["name"]}",
            factory={skeleton.factory},
{skeleton.spec_extra}            description="{description}",
        )
    ]
'''
    test = f'''"""{names["distribution"]}: registered from its declared entry point, and built."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

{chr(10).join(core_imports)}

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def registry() -> PluginRegistry:
    """A strict registry of the entry points pyproject.toml declares (no install needed)."""
    group = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    entry_points = [metadata.EntryPoint(n, v, ENTRY_POINT_GROUP) for n, v in group.items()]
    return PluginRegistry(strict=True, entry_points=entry_points)


def registered_spec() -> {skeleton.spec}:
    spec = registry().resolve(PluginKind.{_kind_of(skeleton)}, "{names["name"]}")
    assert isinstance(spec, {skeleton.spec})
    return spec


{test_body}
'''
    conftest = f'''"""Make the plugin importable when it is tested without being installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("{package}") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
'''
    readme = f"""# {names["distribution"]}

LMCache server plugin registering `{names["name"]}` ({skeleton.spec}). Generated by
`tools/new_plugin.py`; replace `src/{package}/implementation.py` with your implementation and
keep its factory's signature (see docs/plugins.md, "Hook reference").

```bash
pip install -e plugins/{names["distribution"]}
lmcache plugins list
pytest plugins/{names["distribution"]}
```
"""
    return {
        "pyproject.toml": pyproject,
        "README.md": readme,
        f"src/{package}/__init__.py": f'"""LMCache plugin ``{names["name"]}``."""\n',
        f"src/{package}/plugin.py": plugin,
        f"src/{package}/implementation.py": skeleton.implementation.format(**names),
        "tests/conftest.py": conftest,
        f"tests/test_{package}.py": test,
    }


def _kind_of(skeleton: Skeleton) -> str:
    (kind,) = [k for k, s in SKELETONS.items() if s is skeleton]
    return kind.upper()


def generate(root: Path, kind: str, name: str) -> Path:
    """Write the plugin folder under ``root/plugins`` and return it.

    Raises:
        NewPluginError: Unknown kind, invalid name, or the folder exists.
    """
    skeleton = SKELETONS.get(kind.replace("-", "_"))
    if skeleton is None:
        raise NewPluginError(f"unknown kind {kind!r}; one of: {', '.join(SKELETONS)}")
    if not NAME.fullmatch(name):
        raise NewPluginError(
            f"name {name!r}: use lower-case letters, digits and '_', starting with a letter"
        )
    names = derived_names(skeleton, name)
    folder = root / "plugins" / names["distribution"]
    if folder.exists():
        raise NewPluginError(f"{folder} exists already")
    for relative, text in render(skeleton, names).items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", help=f"one of: {', '.join(SKELETONS)}")
    parser.add_argument("name", help="the spec name, snake_case (e.g. my_fifo)")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    args = parser.parse_args(argv)
    try:
        folder = generate(args.root, args.kind, args.name)
    except NewPluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
