"""Development sessions.

``nox`` runs tests, lint and typecheck. Others by name:

* ``nox -s plugins`` (every plugin) or ``nox -s "plugins(lmcache-l2-fs)"`` (one);
* ``nox -s docs``: regenerate the configuration reference and build the site;
* ``nox -s compat`` and ``nox -s bench``: land with issue #3, and fail until then.

Arguments after ``--`` go to pytest: ``nox -s tests -- -k registry -x``.
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

# Tests and CI load plugins strictly: a broken plugin is an error, not a warning.
STRICT = {"LMCACHE_PLUGINS_STRICT": "1"}

# Discovered when nox imports this file, so a new plugin folder needs no edit here.
# Folders starting with "_" (the template) are not plugins of the default set.
PLUGINS = sorted(
    path.parent.name
    for path in ROOT.glob("plugins/*/pyproject.toml")
    if not path.parent.name.startswith("_")
)
# mypy's source roots: every plugin's src/ (the template's too: it is code people copy)
# and the bundle's.
SOURCE_DIRS = sorted(
    str(path.relative_to(ROOT))
    for pattern in ("plugins/*/src", "lmcache_plugins/src")
    for path in ROOT.glob(pattern)
    if path.is_dir()
)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (core, bundle and plugins), in strict plugin mode."""
    session.install("-r", "requirements-dev.txt")
    session.run("python", "-m", "pytest", *session.posargs, env=STRICT)


@nox.session
@nox.parametrize("plugin", PLUGINS, ids=PLUGINS)
def plugins(session: nox.Session, plugin: str) -> None:
    """One plugin's own tests, against the installed default set."""
    tests_dir = ROOT / "plugins" / plugin / "tests"
    if not tests_dir.is_dir():
        session.error(f"plugins/{plugin} has no tests/ folder; every plugin needs tests")
    session.install("-r", "requirements.txt", "pytest")
    session.run(
        "python", "-m", "pytest", str(tests_dir.relative_to(ROOT)), *session.posargs, env=STRICT
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint rules and formatting."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy (strict, see pyproject.toml) over the core, every plugin's sources and tools/."""
    session.install("-r", "requirements-dev.txt")
    session.run("mypy", "lmcache_core", *SOURCE_DIRS, "tools")


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate docs/configuration.md, then build the site strictly into site/."""
    session.install("-r", "requirements.txt", "mkdocs")
    session.run("python", "tools/gen_config_docs.py")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session(python=False)
def compat(session: nox.Session) -> None:
    """Upstream compatibility: an unmodified LMCache 0.5.6 client against this server."""
    session.error("the upstream compatibility test lands with issue #3")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Benchmarks with their ceilings measured in the same run."""
    session.error("the benchmarks land with issue #3 (the data path they measure)")
