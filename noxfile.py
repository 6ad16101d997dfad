"""Development sessions.

``nox`` runs tests, lint and typecheck. Others by name:

* ``nox -s plugins`` (every plugin) or ``nox -s "plugins(lmcache-l2-fs)"`` (one);
* ``nox -s docs``: regenerate the configuration reference and build the site;
* ``nox -s compat``: upstream LMCache 0.5.6's client against this server;
* ``nox -s bench``: the benchmarks (run them on an otherwise idle machine).

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


@nox.session
def compat(session: nox.Session) -> None:
    """Upstream compatibility: LMCache 0.5.6's own vLLM adapters drive this server.

    Upstream lives in a virtualenv of its own (it pulls in many packages); this
    session's env runs our server and the test that starts the upstream driver.
    """
    session.install("-r", "requirements-dev.txt")
    upstream = Path(session.create_tmp()) / "upstream-venv"
    if not (upstream / "bin" / "python").exists():
        session.run("python", "-m", "venv", str(upstream))
        pip = str(upstream / "bin" / "pip")
        # CPU torch first, so lmcache's requirement does not pull a CUDA build.
        session.run(pip, "install", "-q", "torch==2.13.0", external=True)
        session.run(pip, "install", "-q", "lmcache==0.5.6", external=True)
    env = {**STRICT, "LMCACHE_COMPAT_PYTHON": str(upstream / "bin" / "python")}
    session.run("python", "-m", "pytest", "-q", "tests/compat", *session.posargs, env=env)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, each measuring its ceiling (memcpy) in the same run."""
    session.install("-r", "requirements-dev.txt")
    session.run("python", "benchmarks/bench_gather_scatter.py")
    session.run("python", "benchmarks/bench_server.py", *session.posargs)
