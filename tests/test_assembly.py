"""The server is assembled from immutable parts, and a failed assembly leaks nothing."""

from __future__ import annotations

import ast
import dataclasses
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from lmcache_core.config.loading import load_config
from lmcache_core.config.resolution import resolve_plugins
from lmcache_core.errors import StartupError
from lmcache_core.observability.bus import EventBus
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.server.data_path import DataPath, build_data_path
from lmcache_core.server.runner import assemble
from lmcache_core.server.startup import check_startup

CORE = Path(__file__).resolve().parents[1] / "lmcache_core"


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported at a module's top level (not under TYPE_CHECKING or in functions)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in CORE.rglob("*.py"):
        module = ".".join(path.relative_to(CORE.parent).with_suffix("").parts)
        source = _package_of(module.removesuffix(".__init__"))
        for imported in _top_level_imports(path):
            if imported.startswith("lmcache_core."):
                target = _package_of(imported)
                if target != source:
                    graph.setdefault(source, set()).add(target)
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_the_core_packages_import_each_other_without_cycles() -> None:
    graph = _package_graph()
    assert {"server", "http", "storage", "observability"} <= set(graph)  # the scan saw them
    cycles = [c for c in (_cycle_through(graph, p) for p in sorted(graph)) if c]
    assert cycles == []


def test_the_http_face_does_not_import_the_server_assembly() -> None:
    graph = _package_graph()
    assert "server" not in graph["http"]
    assert "server" in graph  # the assembly itself imports http (runner, startup checks)


def _selection(**values: Any) -> tuple[Any, PluginRegistry, Any]:
    config = load_config({"l1_size_gb": 0.01, "eviction_policy": "LRU", **values})
    registry = PluginRegistry(strict=True)
    return config, registry, resolve_plugins(config, registry)


def test_the_data_path_is_frozen_and_names_its_parts() -> None:
    name = f"lmcache-test-{uuid.uuid4().hex[:8]}"
    config, registry, selection = _selection(shm_name=name)
    with ExitStack() as cleanup:
        data_path = build_data_path(config, registry, selection, EventBus(enabled=False), cleanup)
        assert isinstance(data_path, DataPath)
        assert data_path.l2 is None  # no --l2-adapter
        assert data_path.sessions is data_path.engine.sessions
        with pytest.raises(dataclasses.FrozenInstanceError):
            data_path.l2 = None  # type: ignore[misc]
        segment = data_path.l1.arena.path
        assert segment is not None and segment.exists()
    # Unwinding the stack released the arena it registered.
    assert not segment.exists()


def test_a_factory_that_raises_late_leaks_no_arena_and_no_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"lmcache-test-{uuid.uuid4().hex[:8]}"
    adapter = {"type": "fs", "base_path": str(tmp_path / "l2"), "max_capacity_gb": 0.01}
    config, registry, selection = _selection(shm_name=name, l2_adapter=[adapter])
    closed: list[str] = []
    spec = selection.adapters[0].spec

    def tracking_factory(*args: Any) -> Any:
        built = spec.factory(*args)
        original = built.close
        built.close = lambda: (closed.append(built.name), original())[1]
        return built

    segments: list[Path] = []

    def failing_engine(context: Any) -> Any:
        segments.append(context.l1.arena.path)
        assert segments[0].exists()  # L1 exists when the engine is built
        raise RuntimeError("engine factory failed")

    adapters = [dataclasses.replace(selection.adapters[0], spec=dataclasses.replace(spec))]
    object.__setattr__(adapters[0].spec, "factory", tracking_factory)
    broken = dataclasses.replace(
        selection,
        engine=dataclasses.replace(selection.engine, factory=failing_engine),
        adapters=adapters,
    )
    monkeypatch.setattr(registry, "owner", lambda _spec: None)
    with pytest.raises(RuntimeError, match="engine factory failed"):
        assemble(config, registry, broken, check_startup(config, broken))
    assert closed == ["fs"]
    assert segments and not segments[0].exists()


def test_a_failed_l2_start_closes_the_adapters_already_started(tmp_path: Path) -> None:
    good = {"type": "fs", "base_path": str(tmp_path / "ok"), "max_capacity_gb": 0.01}
    bad = {"type": "fs", "base_path": "/proc/lmcache-cannot-create", "max_capacity_gb": 0.01}
    name = f"lmcache-test-{uuid.uuid4().hex[:8]}"
    config, registry, selection = _selection(shm_name=name, l2_adapter=[good, bad])
    before = set(Path("/dev/shm").iterdir())
    with pytest.raises(StartupError, match="--l2-adapter #2"):
        assemble(config, registry, selection, check_startup(config, selection))
    assert set(Path("/dev/shm").iterdir()) <= before  # the L1 segment is gone again
