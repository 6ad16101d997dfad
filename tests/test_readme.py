"""The README's test command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", readme)
    assert len(commands) == 2, "the quick start has exactly two commands"
    server, tests = commands
    assert server.endswith("lmcache server --l1-size-gb 1 --eviction-policy LRU")
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()
