"""``--quota-state-file`` in-process: the file format, atomic saves, and refusing bad files."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from lmcache_core.storage.quota import QuotaManager, QuotaTableFull
from lmcache_core.storage.quota_state import QuotaStateError, QuotaStateFile


def test_a_missing_file_is_an_empty_table_and_saves_round_trip(tmp_path: Path) -> None:
    store = QuotaStateFile(tmp_path / "quotas.json")
    assert store.load() == {}
    quotas = QuotaManager(store=store)
    quotas.set_limit("b", 2.5)
    quotas.set_limit("", 1)  # the default salt
    quotas.set_limit("a", 0)
    document = json.loads((tmp_path / "quotas.json").read_text())
    assert document == {"version": 1, "quotas": {"": 1.0, "a": 0.0, "b": 2.5}}
    assert quotas.remove("a") is True and quotas.remove("a") is False
    restored = QuotaManager(store=store)
    restored.restore(store.load())
    assert {salt: e.limit_gb for salt, e in restored.limits().items()} == {"": 1.0, "b": 2.5}
    assert restored.limit_bytes("b") == int(2.5 * 1024**3)
    assert [p.name for p in tmp_path.iterdir()] == ["quotas.json"]  # no temporary left over


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "not a version 1 quota file"),
        ('{"version": 2, "quotas": {}}', "not a version 1 quota file"),
        ('{"version": 1, "quotas": []}', '"quotas" must be an object'),
        ('{"version": 1, "quotas": {"a": "1"}}', "salt 'a': limit_gb must be a number"),
        ('{"version": 1, "quotas": {"a": true}}', "salt 'a': limit_gb must be a number"),
        ('{"version": 1, "quotas": {"a/b": 1}}', "salt 'a/b'"),
    ],
)
def test_invalid_files_are_refused_naming_the_file(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "quotas.json"
    path.write_text(content)
    with pytest.raises(QuotaStateError, match=message) as caught:
        QuotaStateFile(path).load()
    assert str(path) in str(caught.value)


def test_a_missing_directory_and_an_unreadable_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(QuotaStateError, match="does not exist"):
        QuotaStateFile(tmp_path / "nowhere" / "quotas.json").load()
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(QuotaStateError, match="cannot read it"):
        QuotaStateFile(tmp_path / "dir.json").load()


class FailingStore:
    """A store whose disk is full (a stand-in: the failure is what is tested)."""

    def __init__(self) -> None:
        self.saved: list[dict[str, float]] = []
        self.fail = False

    def save(self, limits: Mapping[str, float]) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.saved.append(dict(limits))


def test_a_failed_save_changes_nothing() -> None:
    store = FailingStore()
    quotas = QuotaManager(store=store)
    quotas.set_limit("a", 1.0)
    store.fail = True
    with pytest.raises(OSError, match="No space"):
        quotas.set_limit("a", 5.0)
    with pytest.raises(OSError, match="No space"):
        quotas.remove("a")
    assert quotas.limits()["a"].limit_gb == 1.0
    assert store.saved == [{"a": 1.0}]


def test_restore_is_bounded_and_validated() -> None:
    quotas = QuotaManager(max_entries=2, store=FailingStore())
    with pytest.raises(ValueError, match="more than the table holds"):
        quotas.restore({"a": 1, "b": 1, "c": 1})
    quotas.restore({"a": 1, "b": 1})
    with pytest.raises(QuotaTableFull):
        quotas.set_limit("c", 1)


def test_the_file_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "quotas.json"
    store = QuotaStateFile(path)
    store.save({"a": 1.0})
    inode = os.stat(path).st_ino
    store.save({"a": 2.0})
    assert os.stat(path).st_ino != inode  # a new file renamed over the old, never rewritten
    assert store.load() == {"a": 2.0}
