"""Where keys come from: flags' files, the environment (new and legacy names), the client's key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmcache_core.security.key_sources import (
    MAX_KEY_FILE_BYTES,
    KeySourceError,
    KeySources,
    client_api_key,
    load_keys,
)


def key_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_nothing_configured_means_off() -> None:
    sources = KeySources.gather((), env={})
    assert not sources.configured and load_keys(sources) == ()
    assert not KeySources.gather(
        (), env={"LMCACHE_API_KEY": "", "LMCACHE_API_KEY_FILE": ""}
    ).configured


def test_sources_add_up_in_order(tmp_path: Path) -> None:
    one, two = key_file(tmp_path, "one", "k-one\n"), key_file(tmp_path, "two", "  k-two  ")
    env_file = key_file(tmp_path, "env", "k-env-file")
    sources = KeySources.gather(
        [one, str(two)], env={"LMCACHE_API_KEY_FILE": str(env_file), "LMCACHE_API_KEY": "k-env"}
    )
    assert sources.files == (one, two, env_file)
    assert load_keys(sources) == ("k-one", "k-two", "k-env-file", "k-env")


def test_env_file_named_by_the_flag_too_is_read_once(tmp_path: Path) -> None:
    one = key_file(tmp_path, "one", "k-one")
    sources = KeySources.gather([one], env={"LMCACHE_API_KEY_FILE": str(one)})
    assert sources.files == (one,)


def test_legacy_names_only_when_the_new_ones_are_unset(tmp_path: Path) -> None:
    legacy_file = key_file(tmp_path, "legacy", "k-legacy-file")
    legacy = {"LMCACHE_HTTP_API_KEY": "k-legacy", "LMCACHE_HTTP_API_KEY_FILE": str(legacy_file)}
    assert load_keys(KeySources.gather((), env=legacy)) == ("k-legacy-file", "k-legacy")
    new_file = key_file(tmp_path, "new", "k-new-file")
    both = {**legacy, "LMCACHE_API_KEY": "k-new", "LMCACHE_API_KEY_FILE": str(new_file)}
    assert load_keys(KeySources.gather((), env=both)) == ("k-new-file", "k-new")


@pytest.mark.parametrize(
    ("content", "reason"),
    [("", "empty"), ("  \n", "empty"), ("a\nb\n", "exactly one line"), (b"\xff\xfe", "UTF-8")],
)
def test_bad_key_files_are_refused(tmp_path: Path, content: str | bytes, reason: str) -> None:
    path = tmp_path / "key"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(KeySourceError, match=reason):
        load_keys(KeySources.gather([path], env={}))


def test_missing_and_oversized_key_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeySourceError, match="No such file"):
        load_keys(KeySources.gather([tmp_path / "absent"], env={}))
    big = key_file(tmp_path, "big", "k" * (MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(KeySourceError, match="larger than"):
        load_keys(KeySources.gather([big], env={}))


def test_client_key(tmp_path: Path) -> None:
    assert client_api_key(None, env={}) is None
    assert client_api_key("explicit", env={"LMCACHE_API_KEY": "ignored"}) == "explicit"
    assert client_api_key(None, env={"LMCACHE_API_KEY": "from-env"}) == "from-env"
    path = key_file(tmp_path, "key", "from-file\n")
    assert client_api_key(None, env={"LMCACHE_API_KEY_FILE": str(path)}) == "from-file"
    with pytest.raises(KeySourceError, match="not both"):
        client_api_key(None, env={"LMCACHE_API_KEY_FILE": str(path), "LMCACHE_API_KEY": "x"})
    with pytest.raises(KeySourceError, match="must not be empty"):
        client_api_key(" ", env={})
