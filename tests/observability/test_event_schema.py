"""The event records against their checked-in snapshot: fields are only ever added."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import msgspec
import pytest

from lmcache_core.observability.events import EVENT_RECORDS, EventType, MpStoreEnd
from lmcache_core.testing.subscriber_conformance import SAMPLE_VALUES, documented_event
from tests.observability import event_schema
from tests.observability.event_schema import breaking_changes, current_schema, render

REGENERATE = ".venv/bin/python -m tests.observability.event_schema"


def snapshot() -> event_schema.Schema:
    loaded: event_schema.Schema = json.loads(event_schema.SNAPSHOT.read_text())
    return loaded


def test_no_field_was_removed_renamed_or_retyped() -> None:
    assert breaking_changes(snapshot(), current_schema()) == []


def test_the_snapshot_records_every_field() -> None:
    # Fails after a field is added, until the snapshot is regenerated (and reviewed).
    assert current_schema() == snapshot(), f"fields were added: run {REGENERATE}"


def test_the_snapshot_file_is_in_its_rendered_form() -> None:
    assert render(snapshot()) == event_schema.SNAPSHOT.read_text()


def test_every_event_type_has_a_record_and_a_snapshot_entry() -> None:
    assert set(EVENT_RECORDS) == set(EventType)
    assert {t.value for t in EventType} <= set(snapshot())
    for event_type, record in EVENT_RECORDS.items():
        assert record.type == event_type  # the class routes to its own type


def _changed(section: str, edit: str) -> event_schema.Schema:
    schema = copy.deepcopy(current_schema())
    fields = schema[section]["fields"]
    if edit == "remove":
        del fields[1]
    elif edit == "rename":
        fields[1][0] = fields[1][0] + "_renamed"
    elif edit == "retype":
        fields[1][1] = "bytes"
    elif edit == "add":
        fields.append(["added_later", "int"])
    elif edit == "drop type":
        del schema[section]
    return schema


@pytest.mark.parametrize("edit", ["remove", "rename", "retype", "drop type"])
@pytest.mark.parametrize("section", ["mp.store.end", "nested:L2HitSource"])
def test_the_check_catches_each_breaking_change(section: str, edit: str) -> None:
    problems = breaking_changes(current_schema(), _changed(section, edit))
    assert len(problems) == 1 and problems[0].startswith(section)


def test_the_check_allows_an_added_field() -> None:
    assert breaking_changes(current_schema(), _changed("mp.store.end", "add")) == []


def test_regenerating_refuses_a_breaking_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "event_schema.json"
    monkeypatch.setattr(event_schema, "SNAPSHOT", path)
    path.write_text(render(_changed("mp.store.end", "add")))  # the record lacks added_later
    before = path.read_text()
    assert event_schema.main() == 1
    assert path.read_text() == before
    assert "'added_later' was removed or renamed" in capsys.readouterr().out
    path.write_text(render(_changed("mp.store.end", "remove")))  # the record has one more
    assert event_schema.main() == 0
    assert json.loads(path.read_text()) == current_schema()


def test_a_record_cannot_omit_a_field_or_change_after_it_is_built() -> None:
    values = {name: SAMPLE_VALUES[name] for name in event_schema.events.event_fields(MpStoreEnd)}
    del values["ok"]
    with pytest.raises(TypeError, match="ok"):
        MpStoreEnd(**values)
    event = documented_event(EventType.MP_STORE_END)
    with pytest.raises(AttributeError):
        event.ok = False  # type: ignore[misc]
    assert isinstance(event, msgspec.Struct)
