"""Tests of the bundle: its generated lists and the installed default plugin set."""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from lmcache_core.plugin.names import normalize_name
from lmcache_core.plugin.registry import PluginRegistry, PluginStatus
from lmcache_core.plugin.specs import PluginKind

REPO = Path(__file__).resolve().parents[2]
SYNC = REPO / "tools" / "sync_plugins.py"

# Read from the source file rather than `import lmcache_plugins`: pytest's importlib
# mode names this test module `lmcache_plugins.tests.test_bundle` and registers the
# folder lmcache_plugins/ as the package `lmcache_plugins`, hiding the real one.
DEFAULT_DISTRIBUTIONS: tuple[str, ...] = runpy.run_path(
    str(REPO / "lmcache_plugins" / "src" / "lmcache_plugins" / "__init__.py")
)["DEFAULT_DISTRIBUTIONS"]


def run_sync(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the sync tool on the tree at ``root``."""
    return subprocess.run(
        [sys.executable, str(SYNC), "--root", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_generated_files_are_up_to_date() -> None:
    """The repository's generated blocks match plugins/."""
    result = run_sync(REPO, "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_distributions_are_the_plugin_folders() -> None:
    """DEFAULT_DISTRIBUTIONS lists every plugin folder but the template."""
    folders = sorted(
        p.parent.name
        for p in (REPO / "plugins").glob("*/pyproject.toml")
        if p.parent.name[0] != "_"
    )
    assert list(DEFAULT_DISTRIBUTIONS) == folders
    assert len(DEFAULT_DISTRIBUTIONS) == 32
    assert "lmcache-example-eviction" not in DEFAULT_DISTRIBUTIONS


def requirement_name(requirement: str) -> str:
    """The distribution a requirement string names (``a-b==1.0`` -> ``a_b``)."""
    return normalize_name(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])


def project_of(path: Path) -> dict[str, object]:
    project: dict[str, object] = tomllib.loads(path.read_text())["project"]
    return project


def test_bundle_pins_the_exact_versions_of_the_tree() -> None:
    """The bundle's dependencies are the core and every plugin, each ``==`` its version."""
    pinned = project_of(REPO / "lmcache_plugins" / "pyproject.toml")["dependencies"]
    expected = [f"lmcache-core=={project_of(REPO / 'pyproject.toml')['version']}"] + [
        f"{name}=={project_of(REPO / 'plugins' / name / 'pyproject.toml')['version']}"
        for name in DEFAULT_DISTRIBUTIONS
    ]
    assert pinned == expected


def test_every_plugin_pins_a_compatible_core_range() -> None:
    """Each plugin accepts any core of the current major version, and only that."""
    for name in DEFAULT_DISTRIBUTIONS:
        dependencies = project_of(REPO / "plugins" / name / "pyproject.toml")["dependencies"]
        assert isinstance(dependencies, list)
        core = [d for d in dependencies if requirement_name(d) == "lmcache_core"]
        assert core == ["lmcache-core>=0.1,<1"], name
        for other in dependencies:  # plugins depending on plugins use the same kind of range
            if requirement_name(other).startswith("lmcache_") and other not in core:
                assert other.endswith(">=0.1,<1"), (name, other)


def test_installed_bundle_requires_every_default_distribution() -> None:
    """The installed bundle depends on the core and every default plugin."""
    requires = {requirement_name(r) for r in metadata.requires("lmcache-plugins") or []}
    expected = {normalize_name(n) for n in ("lmcache-core", *DEFAULT_DISTRIBUTIONS)}
    assert requires == expected


def test_every_default_distribution_loads_in_strict_mode() -> None:
    """Each default plugin loads and registers one implementation (plus its HTTP routes)."""
    registry = PluginRegistry(strict=True)
    loaded = {r.distribution for r in registry.records if r.status is PluginStatus.OK}
    assert set(DEFAULT_DISTRIBUTIONS) <= loaded
    for record in registry.records:
        if record.distribution in DEFAULT_DISTRIBUTIONS:
            kinds = [spec.kind for spec in record.specs]
            main = [kind for kind in kinds if kind is not PluginKind.HTTP_ROUTER]
            assert len(main) == 1, record


def make_tree(root: Path) -> None:
    """A minimal copy of the repository files the sync tool reads and writes."""
    for relative in (
        "pyproject.toml",
        "requirements.txt",
        "lmcache_plugins/pyproject.toml",
        "lmcache_plugins/src/lmcache_plugins/__init__.py",
        "plugins/lmcache-l2-fs/pyproject.toml",
    ):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / relative, root / relative)


def test_check_reports_a_new_plugin_and_sync_adds_it(tmp_path: Path) -> None:
    """--check reports a new plugin folder; a plain run adds it everywhere."""
    make_tree(tmp_path)
    assert run_sync(tmp_path).returncode == 0  # the tree now lists only lmcache-l2-fs
    new = tmp_path / "plugins" / "lmcache-l2-zzz"
    new.mkdir()
    (new / "pyproject.toml").write_text(
        '[project]\nname = "lmcache-l2-zzz"\nversion = "0.2.0"\n'
        '[project.entry-points."lmcache.plugins"]\nl2_zzz = "lmcache_l2_zzz.plugin"\n'
    )
    stale = run_sync(tmp_path, "--check")
    assert stale.returncode == 1
    assert '+    "lmcache-l2-zzz==0.2.0",' in stale.stdout
    assert "+-e ./plugins/lmcache-l2-zzz" in stale.stdout
    assert run_sync(tmp_path).returncode == 0
    assert run_sync(tmp_path, "--check").returncode == 0
    requirements = (tmp_path / "requirements.txt").read_text().splitlines()
    editable = [line for line in requirements if line.startswith("-e")]
    assert editable == [
        "-e .",
        "-e ./plugins/lmcache-l2-fs",
        "-e ./plugins/lmcache-l2-zzz",
        "-e ./lmcache_plugins",
    ]
    bundle = runpy.run_path(str(tmp_path / "lmcache_plugins/src/lmcache_plugins/__init__.py"))
    assert bundle["DEFAULT_DISTRIBUTIONS"] == ("lmcache-l2-fs", "lmcache-l2-zzz")


def test_folder_must_be_named_after_its_distribution(tmp_path: Path) -> None:
    """A folder named unlike its distribution is an error."""
    make_tree(tmp_path)
    wrong = tmp_path / "plugins" / "misnamed"
    wrong.mkdir()
    shutil.copy(REPO / "plugins/lmcache-l2-fs/pyproject.toml", wrong / "pyproject.toml")
    result = run_sync(tmp_path, "--check")
    assert result.returncode == 2
    assert "must equal the folder name" in result.stderr
