"""The event schema snapshot: each event type's record, ordered fields and their types.

``tests/observability/event_schema.json`` is checked in; ``test_event_schema.py``
fails while a record lost, renamed or retyped a field the snapshot has, and while
the snapshot misses a field a record added. Record an added field with::

    .venv/bin/python -m tests.observability.event_schema

which refuses (exit 1, nothing written) when the change is not only additions:
"fields are only ever added" (events.py) is then a rule the tests keep.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import msgspec

from lmcache_core.observability import events
from lmcache_core.storage.keys import ObjectKey

SNAPSHOT = Path(__file__).with_name("event_schema.json")

Schema = dict[str, dict[str, Any]]
"""Section name (an event type, or ``nested:<record>``) -> ``{"record", "fields"}``."""


def type_name(annotation: Any) -> str:
    """A field annotation as stable text: ``tuple[ObjectKey, ...]``, ``Mapping[str, int]``."""
    origin = typing.get_origin(annotation)
    if origin is None:
        if annotation is Ellipsis:
            return "..."
        return getattr(annotation, "__qualname__", repr(annotation))
    arguments = ", ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is types.UnionType or origin is typing.Union:
        return arguments.replace(", ", " | ")
    return f"{getattr(origin, '__qualname__', repr(origin))}[{arguments}]"


def _hints(record: type) -> dict[str, Any]:
    # ObjectKey is imported by events.py for type checking only (no package cycle at run time).
    return typing.get_type_hints(record, vars(events) | {"ObjectKey": ObjectKey})


def _nested(annotation: Any) -> list[type[msgspec.Struct]]:
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return [annotation]
    return [n for argument in typing.get_args(annotation) for n in _nested(argument)]


def current_schema() -> Schema:
    """The schema of the records in :data:`~lmcache_core.observability.events.EVENT_RECORDS`."""
    schema: Schema = {}
    nested: dict[str, type[msgspec.Struct]] = {}
    for event_type, record in events.EVENT_RECORDS.items():
        hints = _hints(record)
        names = events.event_fields(record)
        schema[event_type.value] = {
            "record": record.__name__,
            "fields": [[name, type_name(hints[name])] for name in names],
        }
        for name in names:
            nested.update({n.__name__: n for n in _nested(hints[name])})
    for name, record in sorted(nested.items()):
        hints = _hints(record)
        fields = [[f, type_name(hints[f])] for f in record.__struct_fields__]
        schema[f"nested:{name}"] = {"record": name, "fields": fields}
    return schema


def breaking_changes(snapshot: Schema, current: Schema) -> list[str]:
    """What ``current`` removed, renamed or retyped of ``snapshot`` (additions are fine)."""
    problems = []
    for section, old in snapshot.items():
        new = current.get(section)
        if new is None:
            problems.append(f"{section}: the event type (or nested record) is gone")
            continue
        new_types = dict(map(tuple, new["fields"]))
        for name, old_type in old["fields"]:
            if name not in new_types:
                problems.append(f"{section}: field {name!r} was removed or renamed")
            elif new_types[name] != old_type:
                problems.append(f"{section}: field {name!r} was {old_type}, is {new_types[name]}")
    return problems


def render(schema: Schema) -> str:
    """The snapshot file's text (one field per line, so diffs show each change)."""
    lines = ["{"]
    for index, (section, entry) in enumerate(schema.items()):
        fields = ",\n".join(f"      {json.dumps(field)}" for field in entry["fields"])
        comma = "," if index < len(schema) - 1 else ""
        lines.append(
            f"  {json.dumps(section)}: {{\n"
            f'    "record": {json.dumps(entry["record"])},\n'
            f'    "fields": [\n{fields}\n    ]\n'
            f"  }}{comma}"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Rewrite the snapshot when the records only added fields; otherwise say what broke."""
    current = current_schema()
    if SNAPSHOT.exists():
        problems = breaking_changes(json.loads(SNAPSHOT.read_text()), current)
        if problems:
            print("not written: fields are only ever added, but", *problems, sep="\n  ")
            return 1
    SNAPSHOT.write_text(render(current))
    print(f"wrote {SNAPSHOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
