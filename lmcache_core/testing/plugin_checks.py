"""Assertions shared by the tests of plugin distributions.

Every plugin distribution's tests check the same things: that its installed entry
point registers exactly one spec under the expected name, that a plugin whose
behaviour has not landed yet fails loudly with its reason, and that an adapter's
configuration model accepts what its README documents and rejects bad values
with the field named. These helpers are plain functions that raise
:class:`AssertionError`, so they work under any test runner::

    from lmcache_core.plugin import PluginKind
    from lmcache_core.testing.plugin_checks import assert_pending_plugin

    def test_registered_and_pending() -> None:
        assert_pending_plugin(PluginKind.ENGINE, "blend", "lmcache-engine-blend", "CacheBlend")
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from lmcache_core.errors import PluginNotImplementedError
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.plugin.specs import PluginKind, PluginSpec

_ADAPTER_EXAMPLE = re.compile(r"--l2-adapter '(\{.*?\})'")


def assert_registered_plugin(kind: PluginKind, name: str, distribution: str) -> PluginSpec:
    """Check that ``distribution`` registers an implemented ``name`` of ``kind``.

    Loads the installed entry points in strict mode, resolves ``name``, and checks
    its owner, that it is the distribution's only spec, its description, and that
    it is not marked "not implemented yet".

    Returns:
        The resolved spec, for further kind-specific checks.
    """
    registry = PluginRegistry(strict=True)
    spec = registry.resolve(kind, name)
    assert spec.name == name, f"{name!r} resolved to a spec named {spec.name!r}"
    record = registry.owner(spec)
    assert record.distribution == distribution, (
        f"{kind.value} {name!r} is registered by {record.distribution!r}, not {distribution!r}"
    )
    assert record.specs == [spec], (
        f"{distribution} registers {len(record.specs)} specs; expected exactly one"
    )
    assert spec.description, f"{kind.value} {name!r} has no description"
    assert spec.not_implemented is None, f"{kind.value} {name!r} is still pending"
    return spec


def assert_pending_plugin(
    kind: PluginKind, name: str, distribution: str, reason_fragment: str
) -> PluginSpec:
    """Check an installed plugin that is registered but not implemented yet.

    Loads the installed entry points in strict mode (any broken or conflicting
    plugin fails the check), then checks that ``name`` resolves to a spec that
    ``distribution`` registered as its only spec, and that building it, through
    the registry or by calling the factory directly, raises
    :class:`~lmcache_core.errors.PluginNotImplementedError` naming the reason.

    Args:
        kind: The kind the plugin registers.
        name: The spec's name, spelled exactly as the plugin spells it.
        distribution: The distribution expected to own the spec.
        reason_fragment: Text the ``not_implemented`` reason must contain.

    Returns:
        The resolved spec, for further kind-specific checks.
    """
    registry = PluginRegistry(strict=True)
    spec = registry.resolve(kind, name)
    assert spec.name == name, f"{name!r} resolved to a spec named {spec.name!r}"
    record = registry.owner(spec)
    assert record.distribution == distribution, (
        f"{kind.value} {name!r} is registered by {record.distribution!r}, not {distribution!r}"
    )
    assert record.specs == [spec], (
        f"{distribution} registers {len(record.specs)} specs; expected exactly one"
    )
    assert spec.description, f"{kind.value} {name!r} has no description"
    assert spec.not_implemented and reason_fragment in spec.not_implemented, (
        f"reason {spec.not_implemented!r} does not contain {reason_fragment!r}"
    )
    _assert_raises_not_implemented(lambda: registry.build(kind, name), reason_fragment)
    _assert_raises_not_implemented(spec.factory, reason_fragment)
    return spec


def _assert_raises_not_implemented(build: Any, reason_fragment: str) -> None:
    try:
        build()
    except PluginNotImplementedError as exc:
        assert reason_fragment in str(exc), f"{str(exc)!r} does not contain {reason_fragment!r}"
    else:
        raise AssertionError("building a pending plugin did not raise PluginNotImplementedError")


def without(data: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """Return a copy of ``data`` without ``keys`` (to test required fields)."""
    missing = [key for key in keys if key not in data]
    assert not missing, f"{missing} not in {sorted(data)}"
    return {key: value for key, value in data.items() if key not in keys}


def assert_config_rejects(
    model: type[BaseModel], data: Mapping[str, Any], field: str
) -> ValidationError:
    """Check that ``model`` rejects ``data`` with an error that names ``field``.

    An error names the field when the field is part of its location or, for
    errors of validators that check several fields together, when its message
    contains the field's name as a word.

    Args:
        model: The configuration model.
        data: The JSON-like input.
        field: The field the error must name.

    Returns:
        The validation error, for further checks of its message.
    """
    try:
        model.model_validate(data)
    except ValidationError as exc:
        word = re.compile(rf"\b{re.escape(field)}\b")
        for error in exc.errors():
            if field in (str(part) for part in error["loc"]) or word.search(error["msg"]):
                return exc
        raise AssertionError(
            f"{model.__name__} rejected {data!r} without naming {field!r}: {exc}"
        ) from exc
    raise AssertionError(f"{model.__name__} accepted {data!r}; expected {field!r} to be rejected")


def readme_adapter_examples(readme: Path) -> list[dict[str, Any]]:
    """The JSON objects of every ``--l2-adapter '{...}'`` example in a README.

    Args:
        readme: The README to read.

    Returns:
        The parsed examples; at least one, or the check fails.
    """
    examples = [json.loads(text) for text in _ADAPTER_EXAMPLE.findall(readme.read_text())]
    assert examples, f"{readme} has no --l2-adapter '{{...}}' example"
    return examples


def assert_readme_documents_fields(model: type[BaseModel], readme: Path) -> None:
    """Check that a README names every adapter-specific field of ``model`` in backquotes.

    The fields every adapter shares (``L2AdapterConfigBase``) are documented once,
    in the configuration reference, so an adapter's README need not repeat them.

    Args:
        model: The configuration model.
        readme: The README that documents it.
    """
    from lmcache_core.config.l2_adapter import L2AdapterConfigBase

    text = readme.read_text()
    common = set(L2AdapterConfigBase.model_fields) - {"type"}
    own = [name for name in model.model_fields if name not in common]
    undocumented = [name for name in own if f"`{name}`" not in text]
    assert not undocumented, f"{readme} does not document {undocumented}"


def assert_readme_configures(model: type[BaseModel], readme: Path) -> None:
    """Every ``--l2-adapter`` example of a README validates, and it documents every field.

    Args:
        model: The adapter's configuration model.
        readme: The README that documents it.
    """
    for example in readme_adapter_examples(readme):
        model.model_validate(example)
    assert_readme_documents_fields(model, readme)
