"""The README's test command is the one CI runs (through the noxfile's tests session)."""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def noxfile() -> ModuleType:
    """noxfile.py, loaded once (loading registers its sessions with nox)."""
    spec = importlib.util.spec_from_file_location("lmcache_noxfile", ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nox_sessions_of_ci() -> list[str]:
    """The sessions .ci/run's nox command runs (its -s arguments)."""
    script = (ROOT / ".ci" / "run").read_text().replace("\\\n", " ")  # join continued lines
    for line in script.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0].endswith("/nox") and "-s" in words:
            return words[words.index("-s") + 1 :]
    raise AssertionError(".ci/run runs no nox sessions")


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", readme)
    assert len(commands) == 2, "the quick start has exactly two commands"
    server, tests = commands
    assert server.endswith("lmcache server --l1-size-gb 1 --eviction-policy LRU")
    # The tests session runs the README's command verbatim, and CI runs that session.
    assert tests == noxfile().README_TEST_COMMAND
    assert "tests" in nox_sessions_of_ci()


def test_ci_runs_the_default_sessions_of_the_noxfile() -> None:
    # One source of truth: CI runs what `nox` runs, not its own copy of the commands.
    module = noxfile()
    assert nox_sessions_of_ci() == list(module.nox.options.sessions)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "redis-server" in ci  # the L2 tests' real backend is installed by CI
    assert "libibverbs1" in ci  # and Mooncake's native dependency
    assert "mypy" not in ci and "ruff" not in ci and "pytest" not in ci
