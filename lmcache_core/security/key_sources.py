"""Where API keys come from: key files and environment variables.

The names follow upstream's 0.5.7 line, so one deployment's settings work with
either server:

* ``--api-key-file PATH`` (repeatable; ``--http-api-key-file`` is its alias):
  one key per file, one line, surrounding whitespace stripped;
* ``LMCACHE_API_KEY_FILE``: one more key file;
* ``LMCACHE_API_KEY``: one key given directly;
* ``LMCACHE_HTTP_API_KEY_FILE`` and ``LMCACHE_HTTP_API_KEY``: the older names of
  the two variables, read only when the new one is unset or empty.

All sources add up: during a rotation the server accepts the old and the new
key at once. Empty environment values count as unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

API_KEY_ENV = "LMCACHE_API_KEY"
API_KEY_FILE_ENV = "LMCACHE_API_KEY_FILE"
LEGACY_API_KEY_ENV = "LMCACHE_HTTP_API_KEY"
LEGACY_API_KEY_FILE_ENV = "LMCACHE_HTTP_API_KEY_FILE"

MAX_KEY_FILE_BYTES = 4096
"""A key file larger than this is refused: it is not a key (and reading it is bounded)."""


class KeySourceError(ValueError):
    """A configured key source cannot be used (unreadable, empty, several lines)."""


def _first_set(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


@dataclass(frozen=True)
class KeySources:
    """The key files and the literal keys one process was configured with.

    Attributes:
        files: Key files in order: the ``--api-key-file`` flags, then the
            environment's file (duplicates removed).
        literal: Keys given directly (the environment's ``LMCACHE_API_KEY``);
            these cannot change while the process runs.
    """

    files: tuple[Path, ...] = ()
    literal: tuple[str, ...] = ()

    @classmethod
    def gather(
        cls, key_files: Sequence[str | Path], env: Mapping[str, str] | None = None
    ) -> KeySources:
        """Collect the flags' key files and the environment's sources.

        Args:
            key_files: The ``--api-key-file`` values.
            env: The environment to read (the process's by default).
        """
        env = os.environ if env is None else env
        files = [Path(path) for path in key_files]
        env_file = _first_set(env, API_KEY_FILE_ENV, LEGACY_API_KEY_FILE_ENV)
        if env_file is not None and Path(env_file) not in files:
            files.append(Path(env_file))
        env_key = _first_set(env, API_KEY_ENV, LEGACY_API_KEY_ENV)
        return cls(tuple(files), (env_key.strip(),) if env_key and env_key.strip() else ())

    @property
    def configured(self) -> bool:
        """Whether any source is configured (authentication is then on)."""
        return bool(self.files or self.literal)


def read_key_file(path: Path) -> str:
    """The one key in ``path``.

    Raises:
        KeySourceError: The file cannot be read, is too large, is empty or holds
            more than one line.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeySourceError(f"API key file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeySourceError(f"API key file {path}: larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise KeySourceError(f"API key file {path}: not UTF-8 text") from None
    if not text:
        raise KeySourceError(f"API key file {path}: empty")
    if len(text.splitlines()) != 1:
        raise KeySourceError(f"API key file {path}: must hold exactly one line")
    return text


def load_keys(sources: KeySources) -> tuple[str, ...]:
    """Every key the sources hold: the files' in order, then the literal ones.

    Raises:
        KeySourceError: A key file cannot be used.
    """
    return (*(read_key_file(path) for path in sources.files), *sources.literal)


def client_api_key(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The one key a client sends: ``explicit``, else the environment's, else none.

    A client presents one credential, so configuring both environment sources
    (a key and a key file) is an error rather than a silent choice.

    Raises:
        KeySourceError: ``explicit`` is empty, both environment sources are set,
            or the environment's key file cannot be used.
    """
    if explicit is not None:
        if not explicit.strip():
            raise KeySourceError("the client's api_key must not be empty")
        return explicit.strip()
    sources = KeySources.gather((), env)
    if len(sources.files) + len(sources.literal) > 1:
        raise KeySourceError(
            f"configure one client key: {API_KEY_ENV} or {API_KEY_FILE_ENV}, not both"
        )
    keys = load_keys(sources)
    return keys[0] if keys else None
