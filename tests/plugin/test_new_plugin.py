"""tools/new_plugin.py generates plugins that install, load and pass their own tests."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from lmcache_core.plugin.kinds import KINDS
from lmcache_core.plugin.registry import ENTRY_POINT_GROUP, PluginRegistry, PluginStatus
from lmcache_core.plugin.specs import PluginKind

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "new_plugin.py"
GENERATED_KINDS = [
    PluginKind.EVICTION_POLICY,
    PluginKind.STORE_POLICY,
    PluginKind.PREFETCH_POLICY,
    PluginKind.SUBSCRIBER,
    PluginKind.CLI_COMMAND,
]


def new_plugin(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), "--root", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def install_like_pip(folder: Path) -> list[metadata.EntryPoint]:
    """A .dist-info beside the sources, as an editable pip install leaves, and its entry points."""
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    src = folder / "src"
    info = src / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    group = project["entry-points"][ENTRY_POINT_GROUP]
    lines = "".join(f"{name} = {value}\n" for name, value in group.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    return [
        ep
        for dist in metadata.distributions(path=[str(src)])
        for ep in dist.entry_points
        if ep.group == ENTRY_POINT_GROUP
    ]


@pytest.mark.parametrize("kind", GENERATED_KINDS, ids=str)
def test_a_generated_plugin_loads_through_the_registry(
    kind: PluginKind, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"gen_{kind.value}"
    result = new_plugin(tmp_path, kind.value, name)
    assert result.returncode == 0, result.stderr
    (folder,) = (tmp_path / "plugins").iterdir()
    assert result.stdout.strip() == f"created {folder}"
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    assert project["name"] == folder.name
    assert project["dependencies"] == ["lmcache-core>=0.1,<1"]
    monkeypatch.syspath_prepend(str(folder / "src"))
    registry = PluginRegistry(strict=True, entry_points=install_like_pip(folder))
    (record,) = registry.records
    assert record.status is PluginStatus.OK
    assert record.distribution == folder.name
    package = folder.name.replace("-", "_")
    assert record.name == package.removeprefix("lmcache_")
    assert record.module == f"{package}.plugin"
    (spec,) = record.specs
    assert isinstance(spec, KINDS[kind].spec_type)
    assert registry.resolve(kind, name) is spec


def test_the_names_are_all_derived_from_kind_and_name(tmp_path: Path) -> None:
    assert new_plugin(tmp_path, "eviction-policy", "my_fifo").returncode == 0
    folder = tmp_path / "plugins" / "lmcache-eviction-my-fifo"
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    assert project["name"] == "lmcache-eviction-my-fifo"
    assert project["entry-points"][ENTRY_POINT_GROUP] == {
        "eviction_my_fifo": "lmcache_eviction_my_fifo.plugin"
    }
    assert (folder / "src" / "lmcache_eviction_my_fifo" / "plugin.py").is_file()
    assert 'name="my_fifo"' in (folder / "src/lmcache_eviction_my_fifo/plugin.py").read_text()


def test_a_generated_plugin_passes_its_own_tests(tmp_path: Path) -> None:
    assert new_plugin(tmp_path, "eviction_policy", "my_fifo").returncode == 0
    folder = tmp_path / "plugins" / "lmcache-eviction-my-fifo"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Its own test plus the core's eviction conformance suite, which the skeleton subclasses.
    passed = int(result.stdout.rsplit(" passed", 1)[0].split()[-1])
    assert passed > 10, result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("engine_x", "mine"), "unknown kind 'engine_x'"),
        (("eviction_policy", "My-Policy"), "name 'My-Policy'"),
        (("eviction_policy", "2fast"), "name '2fast'"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, args: tuple[str, str], message: str) -> None:
    result = new_plugin(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "plugins").exists()


def test_an_existing_folder_is_never_overwritten(tmp_path: Path) -> None:
    assert new_plugin(tmp_path, "store_policy", "twice").returncode == 0
    again = new_plugin(tmp_path, "store_policy", "twice")
    assert again.returncode == 2
    assert "exists already" in again.stderr
