"""docs/plugins.md stays in step with the hookspec module and the factory types.

For every hook of ``lmcache_core/plugin/hookspecs.py``: a ``### `hook``` section
with the hook's exact signature, its factory's type (read from the spec record's
``factory`` field) and its call semantics (the hook docstring's paragraph after
the ``Factory:`` line); the hookspec docstring's ``Factory:`` line matches the
type too. Also: every ``EngineContext`` field is in the engine table, and the core
CLI commands are listed. Change a signature and these fail.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import fields
from pathlib import Path

import pytest

from lmcache_core.cli.main import CORE_COMMANDS
from lmcache_core.engine.contract import EngineContext
from lmcache_core.plugin import factories, hookspecs
from lmcache_core.plugin.kinds import KINDS, KindInfo

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
HOOKS = [pytest.param(info, id=info.hook) for info in KINDS.values()]


def words(text: str) -> str:
    """``text`` as it reads: reST roles and markup dropped, whitespace collapsed."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"`\1`", text)
    return " ".join(text.replace("``", "`").split())


def section(heading: str) -> str:
    """The body of the ``###`` section titled ``heading`` in docs/plugins.md."""
    text = DOCS.read_text()
    match = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^#{{2,3}} )", text, re.M | re.S)
    assert match, f"docs/plugins.md has no section '### {heading}'"
    return match.group(1)


def signature(info: KindInfo) -> str:
    """The hook's exact signature, as written in the hookspec module."""
    hook = getattr(hookspecs, info.hook)
    params = ", ".join(inspect.signature(hook).parameters)
    return f"def {info.hook}({params}) -> {hook.__annotations__['return']}"


def factory_type(info: KindInfo) -> str:
    """The type of the spec record's ``factory`` field, its alias expanded."""
    (annotation,) = [f.type for f in fields(info.spec_type) if f.name == "factory"]
    match = re.fullmatch(r"(\w+)(?:\[\w+\])?", str(annotation))
    assert match and hasattr(factories, match.group(1)), annotation
    return str(getattr(factories, match.group(1)))


def call_semantics(info: KindInfo) -> str:
    """The hook docstring's paragraph after its ``Factory:`` line."""
    paragraphs = (inspect.getdoc(getattr(hookspecs, info.hook)) or "").split("\n\n")
    index = next(i for i, p in enumerate(paragraphs) if p.startswith("Factory:"))
    return words(paragraphs[index + 1])


@pytest.mark.parametrize("info", HOOKS)
def test_the_hookspec_names_its_factory_type(info: KindInfo) -> None:
    doc = inspect.getdoc(getattr(hookspecs, info.hook)) or ""
    assert f"Factory: ``{factory_type(info)}``" in doc


@pytest.mark.parametrize("info", HOOKS)
def test_the_docs_have_the_exact_signature(info: KindInfo) -> None:
    assert f"```python\n{signature(info)}\n```" in section(f"`{info.hook}`")


@pytest.mark.parametrize("info", HOOKS)
def test_the_docs_have_the_factory_type(info: KindInfo) -> None:
    assert f"Factory: `{factory_type(info)}`" in section(f"`{info.hook}`")
    table_row = f"| `{info.spec_type.__name__}` |"
    row = next(line for line in DOCS.read_text().splitlines() if f"(#{info.hook})" in line)
    assert table_row in row and row.endswith(f"| `{factory_type(info)}` |"), row


@pytest.mark.parametrize("info", HOOKS)
def test_the_docs_have_the_call_semantics(info: KindInfo) -> None:
    assert call_semantics(info) in words(section(f"`{info.hook}`"))


def test_the_docs_document_no_hook_that_does_not_exist() -> None:
    documented = set(re.findall(r"^### `(lmcache_\w+)`", DOCS.read_text(), re.M))
    assert documented == {info.hook for info in KINDS.values()}


def test_the_shared_call_semantics_are_documented() -> None:
    for rule in ("All results are collected.", "marked *broken*", "is a conflict"):
        assert rule in (hookspecs.__doc__ or "")
        assert rule in DOCS.read_text()


def test_every_engine_context_field_is_in_the_engine_table() -> None:
    text = DOCS.read_text()
    table = text[text.index("## The engine contract") : text.index("It returns an `Engine`")]
    documented = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert documented == [f.name for f in fields(EngineContext)]


def test_the_core_commands_are_listed() -> None:
    listed = re.search(r"The core commands are (.*)\.", section("`lmcache_register_cli_commands`"))
    assert listed, "the CLI section lists the core commands"
    assert set(re.findall(r"`(\w+)`", listed.group(1))) == set(CORE_COMMANDS)
