"""docs/configuration.md must match what tools/gen_config_docs.py generates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lmcache_core.plugin.specs import PluginKind

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "tools" / "gen_config_docs.py"
DOC = ROOT / "docs" / "configuration.md"


def _load_generator() -> ModuleType:
    # tools/ is not a package; load the script as a module, in this process.
    spec = importlib.util.spec_from_file_location("gen_config_docs", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    module = _load_generator()
    if not module.load_registry().specs(PluginKind.L2_ADAPTER):
        pytest.skip(
            "no L2 adapter plugin is installed, so the generated page would lack its adapter "
            "tables; install them with: pip install -r requirements.txt"
        )
    return module


def test_configuration_reference_is_current(generator: ModuleType) -> None:
    if generator.main(["--check", "--output", str(DOC)]) != 0:
        pytest.fail(f"{DOC.relative_to(ROOT)} is stale: run python tools/gen_config_docs.py")


def test_check_mode_detects_a_stale_page(generator: ModuleType, tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    assert generator.main(["--output", str(page)]) == 0
    assert generator.main(["--check", "--output", str(page)]) == 0
    page.write_text(page.read_text().replace("--l1-size-gb", "--l1-size-tb", 1))
    assert generator.main(["--check", "--output", str(page)]) == 1
    page.unlink()
    assert generator.main(["--check", "--output", str(page)]) == 1


def test_page_covers_every_flag_and_adapter(generator: ModuleType) -> None:
    from lmcache_core.config.base import env_name, flag_name
    from lmcache_core.config.server import ServerConfig

    registry = generator.load_registry()
    text = generator.render(registry)
    for group in ServerConfig.groups().values():
        assert f"## {group.panel}\n" in text
        for field_name in group.model_fields:
            assert f"`{flag_name(field_name)}" in text, field_name
            assert f"`{env_name(field_name)}`" in text, field_name
    for spec in registry.specs(PluginKind.L2_ADAPTER):
        assert f"### `{spec.name}`\n" in text, spec.name
    assert "`--l1-use-lazy/--no-l1-use-lazy`" in text
    assert generator.render(registry) == text, "the output is not deterministic"
