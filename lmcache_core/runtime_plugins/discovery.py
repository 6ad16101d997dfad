"""Find runtime plugin scripts and decide which interpreter runs each one.

A location is a file (taken as it is) or a directory, searched recursively for
``*.py`` and ``*.sh`` files in sorted order. Files and directories whose names
start with ``_`` or ``.`` are skipped inside a directory search, so helper
modules, ``__init__.py`` and ``__pycache__`` are never launched.

The interpreter comes from the shebang line when there is one (``#!/usr/bin/env
python3`` included: ``env`` is resolved here, not passed whole to ``which``);
without one, ``.py`` files run under the server's own Python and ``.sh`` files
under ``bash``. A shebang naming an interpreter that does not exist is a
start-up error, never a silent fallback.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmcache_core.errors import StartupError

logger = logging.getLogger("lmcache.runtime_plugins")

FLAG = "--runtime-plugin-locations"
SCRIPT_SUFFIXES = (".py", ".sh")
SHEBANG_MAX_BYTES = 256
"""Linux reads at most this much of a script for its ``#!`` line; so do we."""

_ENV_SPLIT_OPTIONS = frozenset({"-S", "--split-string"})
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class RuntimePluginScript:
    """One script to launch.

    Attributes:
        name: Unique, log-safe name (the file's stem; ``_2``, ``_3`` for repeats).
        path: Absolute path of the script.
        interpreter: The command that runs it, without the script's path.
    """

    name: str
    path: Path
    interpreter: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        """The full command line: the interpreter, then the script."""
        return [*self.interpreter, str(self.path)]


def read_shebang(path: Path) -> list[str] | None:
    """The words of ``path``'s ``#!`` line, or ``None`` when it has none.

    Arguments are split on whitespace (as ``env -S`` would), not passed as the
    single argument the kernel would make of them.

    Raises:
        StartupError: The file cannot be read, or its shebang is empty or not UTF-8.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(SHEBANG_MAX_BYTES)
    except OSError as exc:
        raise StartupError(f"{FLAG}: cannot read {path}: {exc.strerror}") from None
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].rstrip(b"\r")
    try:
        words = line.decode("utf-8").split()
    except UnicodeDecodeError:
        raise StartupError(f"{FLAG}: {path}: the shebang line is not UTF-8") from None
    if not words:
        raise StartupError(f"{FLAG}: {path}: the shebang line names no interpreter")
    return words


def _which(command: str, path_env: str | None, script: Path, how: str) -> str:
    found = shutil.which(command, path=path_env)
    if found is None:
        raise StartupError(
            f"{FLAG}: {script}: the shebang names {command!r}{how}, which is not on PATH"
        )
    return found


def _from_shebang(words: list[str], script: Path, path_env: str | None) -> tuple[str, ...]:
    program, args = words[0], words[1:]
    if os.path.basename(program) == "env":
        while args and args[0] in _ENV_SPLIT_OPTIONS:
            args = args[1:]
        if args and not args[0].startswith("-") and "=" not in args[0]:
            return (_which(args[0], path_env, script, " (through env)"), *args[1:])
        # Other env options or VAR=value assignments: let env itself do the work.
    if os.path.isabs(program):
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise StartupError(
                f"{FLAG}: {script}: the shebang names {program}, which is not an executable file"
            )
        return (program, *args)
    return (_which(program, path_env, script, ""), *args)


def resolve_interpreter(
    script: Path, *, path_env: str | None = None, python: str = sys.executable
) -> tuple[str, ...]:
    """The command (without the script) that runs ``script``.

    Args:
        script: The plugin file.
        path_env: ``PATH`` to search (default: this process's).
        python: The interpreter of ``.py`` files without a shebang.

    Raises:
        StartupError: The shebang's interpreter is missing, or the file has no
            shebang and is neither ``.py`` nor ``.sh``.
    """
    words = read_shebang(script)
    if words is not None:
        return _from_shebang(words, script, path_env)
    if script.suffix == ".py":
        return (python,)
    if script.suffix == ".sh":
        bash = shutil.which("bash", path=path_env)
        if bash is None:
            raise StartupError(f"{FLAG}: {script}: has no shebang and bash is not on PATH")
        return (bash,)
    raise StartupError(
        f"{FLAG}: {script}: has no shebang line and is neither a .py nor a .sh file, so "
        "there is no interpreter to run it with"
    )


def _skipped(relative: Path) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.parts)


def _search_directory(directory: Path) -> list[Path]:
    found: list[Path] = []
    # os.walk without following links: a symlink loop cannot make the search endless.
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
        for file_name in files:
            candidate = Path(root, file_name)
            relative = candidate.relative_to(directory)
            # is_file(): not a dangling link or a FIFO.
            if (
                candidate.suffix in SCRIPT_SUFFIXES
                and not _skipped(relative)
                and candidate.is_file()
            ):
                found.append(candidate)
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def find_scripts(locations: Sequence[str]) -> list[Path]:
    """Every script of ``locations``, in order, each once (by its real path).

    Raises:
        StartupError: A location does not exist or is neither a file nor a directory.
    """
    scripts: list[Path] = []
    seen: set[str] = set()
    for location in locations:
        path = Path(location).expanduser()
        if not path.exists():
            raise StartupError(f"{FLAG}: {location} does not exist")
        if path.is_file():
            candidates = [path]
        elif path.is_dir():
            candidates = _search_directory(path)
            if not candidates:
                logger.warning("%s: no .py or .sh scripts under %s", FLAG, location)
        else:
            raise StartupError(f"{FLAG}: {location} is neither a regular file nor a directory")
        for candidate in candidates:
            real = os.path.realpath(candidate)
            if real not in seen:
                seen.add(real)
                scripts.append(Path(os.path.abspath(candidate)))
    return scripts


def plugin_names(scripts: Sequence[Path]) -> list[str]:
    """A unique, logger-safe name per script: its stem, suffixed ``_2``, ``_3`` on repeats."""
    names: list[str] = []
    used: set[str] = set()
    for script in scripts:
        base = _UNSAFE_NAME_CHARS.sub("_", script.stem) or "plugin"
        name, count = base, 1
        while name in used:
            count += 1
            name = f"{base}_{count}"
        used.add(name)
        names.append(name)
    return names


def discover(
    locations: Sequence[str], *, path_env: str | None = None, python: str = sys.executable
) -> list[RuntimePluginScript]:
    """The scripts of ``locations`` with their names and interpreters.

    Raises:
        StartupError: A location is missing, or a script has no usable interpreter.
    """
    scripts = find_scripts(locations)
    return [
        RuntimePluginScript(
            name, script, resolve_interpreter(script, path_env=path_env, python=python)
        )
        for name, script in zip(plugin_names(scripts), scripts, strict=True)
    ]


def discovery_problem(locations: Sequence[str]) -> str | None:
    """What would stop the launcher at start-up (for ``--dry-run``), or ``None``."""
    try:
        discover(locations)
    except StartupError as exc:
        return str(exc)
    return None
