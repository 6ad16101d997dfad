"""The ``plugin`` adapter loading a third-party adapter class from a module on the path."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_plugin.adapter import PluginLoadError, build_plugin
from lmcache_l2_plugin.config import PluginAdapterConfig

from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.testing.l2_conformance import L2AdapterConformance

THIRD_PARTY = """
from pydantic import BaseModel
from lmcache_core.storage.l2.adapter import L2AdapterV1

STORE = {}  # outlives adapters, like a real backend


class DictAdapterConfig(BaseModel):
    capacity_bytes: int = 0
    object_format: str = "framed"


class DictAdapter(L2AdapterV1):
    def __init__(self, config):
        super().__init__("dict", capacity_bytes=config.capacity_bytes,
                         object_format=config.object_format)

    def _put(self, key, parts):
        STORE[key] = b"".join(bytes(p) for p in parts)

    def _exists(self, key):
        return key in STORE

    def _get(self, key, size):
        return STORE.get(key)

    def _remove(self, key):
        return STORE.pop(key, None) is not None

    def _known_objects(self):
        return {k: len(v) for k, v in STORE.items()}


class KeywordAdapter(DictAdapter):
    def __init__(self, capacity_bytes=0):
        L2AdapterV1.__init__(self, "kw", capacity_bytes=capacity_bytes)


class NotAnAdapter:
    pass
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"third_party_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(THIRD_PARTY))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def config(module: str, class_name: str, **extra: Any) -> PluginAdapterConfig:
    return PluginAdapterConfig.model_validate(
        {"type": "plugin", "module_path": module, "class_name": class_name, **extra}
    )


def test_builds_with_its_config_class(third_party: str) -> None:
    adapter = build_plugin(config(third_party, "DictAdapter", adapter_params={"capacity_bytes": 7}))
    assert isinstance(adapter, L2AdapterV1) and adapter.capacity_bytes == 7
    adapter.close()


def test_builds_with_keywords_without_a_config_class(third_party: str) -> None:
    adapter = build_plugin(
        config(third_party, "KeywordAdapter", adapter_params={"capacity_bytes": 3})
    )
    assert adapter.capacity_bytes == 3
    adapter.close()


@pytest.mark.parametrize(
    ("module", "class_name", "extra", "message"),
    [
        ("no_such_module_xyz", "DictAdapter", {}, "cannot import"),
        (None, "Missing", {}, "has no attribute 'Missing'"),
        (None, "STORE", {}, "an attribute that is not a class 'STORE'"),
        (None, "NotAnAdapter", {}, "is not an L2AdapterV1 subclass"),
        (None, "DictAdapter", {"config_class_name": "Nope"}, "has no class 'Nope'"),
        (None, "DictAdapter", {"adapter_params": {"capacity_bytes": "many"}}, "adapter_params"),
    ],
)
def test_clear_errors(
    third_party: str, module: str | None, class_name: str, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(PluginLoadError, match=message):
        build_plugin(config(module or third_party, class_name, **extra))


class TestPluginConformance(L2AdapterConformance):
    """The conformance suite through the ``plugin`` loader."""

    __test__ = True

    @pytest.fixture(autouse=True)
    def _module(self, third_party: str) -> None:
        self.module = third_party
        sys.modules[third_party] = __import__(third_party)
        sys.modules[third_party].STORE.clear()

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: str = "framed"
    ) -> L2AdapterV1:
        sys.modules[self.module].STORE.clear()
        params = {"capacity_bytes": capacity_bytes, "object_format": object_format}
        return build_plugin(config(self.module, "DictAdapter", adapter_params=params))

    def reopen(self, adapter: L2AdapterV1, tmp_path: Path) -> L2AdapterV1 | None:
        params = {"capacity_bytes": adapter.capacity_bytes, "object_format": adapter.object_format}
        return build_plugin(config(self.module, "DictAdapter", adapter_params=params))
