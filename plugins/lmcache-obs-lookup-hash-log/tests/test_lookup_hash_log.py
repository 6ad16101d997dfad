"""The lookup-hash log on its own: names, rotation, retention, line shape, errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from lmcache_obs_lookup_hash_log.plugin import build_lookup_hash_log
from lmcache_obs_lookup_hash_log.settings import LookupHashLogSettings
from lmcache_obs_lookup_hash_log.subscriber import PENDING_MAX_AGE_S, LookupHashLogSubscriber
from lmcache_obs_lookup_hash_log.writer import NAME_PATTERN, RotatingJsonlWriter, file_name

from lmcache_core.errors import StartupError
from lmcache_core.hashing import chunk_hashes, make_hasher
from lmcache_core.observability.bus import EventBus
from lmcache_core.observability.events import (
    CbLookupEnd,
    Event,
    EventType,
    FirstMiss,
    MpLookup,
    MpLookupPrefetchEnd,
)

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def writer(directory: Path, clock: Clock, **kw: float) -> RotatingJsonlWriter:
    options = {"rotation_interval_s": 3600.0, "max_size": 10_000, "max_files": 10, **kw}
    return RotatingJsonlWriter(directory, clock=clock, **options)  # type: ignore[arg-type]


def lookup_event(ts: float = T0, **data: object) -> Event:
    fields: dict[str, object] = {
        "request_id": "r1",
        "model_name": "m",
        "cache_salt": "",
        "chunk_size": 16,
        "seq_len": 40,
        "chunk_hashes": ("0x01", "0x02"),
    }
    fields.update(data)
    return MpLookup(timestamp=ts, **fields)  # type: ignore[arg-type]


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_names_are_utc_stamp_and_six_digit_sequence() -> None:
    assert file_name(T0, 7) == "lookup_hashes_20231114_221320_000007.jsonl"
    assert NAME_PATTERN.match(file_name(T0, 999_999))
    assert file_name(T0, 1_000_000).endswith("_000000.jsonl")


def lookup_end(ts: float, request_id: str, **miss: object) -> Event:
    fields: dict[str, object] = {
        "request_id": request_id,
        "model_name": "m",
        "cache_salt": "",
        "requested_tokens": 40,
        "hit_tokens": 16,
        "l1_hit_tokens": 16,
        "l2_hit_tokens": 0,
        "l1_hit_keys": 1,
        "l2_hit_keys": 0,
        "l2_hit_sources": (),
        "duration_s": 0.001,
        "requested_chunks": 2,
        "hit_chunks_by_tier": {"l1": 1.0},
        **miss,
    }
    return MpLookupPrefetchEnd(timestamp=ts, **fields)  # type: ignore[arg-type]


def test_one_json_object_per_lookup_with_upstreams_fields_then_its_result(tmp_path: Path) -> None:
    sub = LookupHashLogSubscriber(writer(tmp_path, Clock()))
    sub.on_event(lookup_event())
    sub.on_event(lookup_event(T0 + 1, request_id="r2", chunk_hashes=[]))
    assert not list(tmp_path.iterdir())  # both wait for their result
    evicted = FirstMiss(chunk=1, cause="evicted", tier="l1", reason="eviction", removed_at=T0)
    # r2's result first: lines follow the results, each flushed as written.
    sub.on_event(lookup_end(T0 + 2, "r2", miss_chunks_by_cause={"never_stored": 2}))
    sub.on_event(lookup_end(T0 + 3, "r1", first_miss=evicted, miss_chunks_by_cause={"evicted": 1}))
    (path,) = tmp_path.iterdir()
    upstream = {"model_name": "m", "chunk_size": 16, "seq_len": 40}
    assert read_lines(path) == [
        {
            "timestamp": T0 + 1,
            "request_id": "r2",
            **upstream,
            "chunk_hashes": [],
            "hit_tokens": 16,
            "hit_chunks_by_tier": {"l1": 1.0},
            "first_miss": None,
            "miss_chunks_by_cause": {"never_stored": 2},
        },
        {
            "timestamp": T0,
            "request_id": "r1",
            **upstream,
            "chunk_hashes": ["0x01", "0x02"],
            "hit_tokens": 16,
            "hit_chunks_by_tier": {"l1": 1.0},
            "first_miss": {
                "chunk": 1,
                "cause": "evicted",
                "tier": "l1",
                "policy": None,
                "reason": "eviction",
                "removed_at": T0,
            },
            "miss_chunks_by_cause": {"evicted": 1},
        },
    ]
    assert path.name == "lookup_hashes_20231114_221320_000000.jsonl"
    sub.close()


def test_a_lookup_without_its_result_is_written_when_bounds_or_close_say_so(
    tmp_path: Path,
) -> None:
    sub = LookupHashLogSubscriber(writer(tmp_path, Clock()))
    sub.on_event(lookup_event(T0, request_id="old"))
    sub.on_event(lookup_event(T0 + 1, request_id="again"))
    sub.on_event(lookup_event(T0 + 2, request_id="again"))  # the first never got its result
    sub.on_event(lookup_event(T0 + PENDING_MAX_AGE_S + 1, request_id="late"))  # "old" too old
    sub.on_event(lookup_end(T0 + 70, "nobody"))  # a result without its lookup: ignored
    sub.close()  # "again" and "late" are still waiting
    (path,) = tmp_path.iterdir()
    lines = read_lines(path)
    assert [(line["request_id"], line["timestamp"]) for line in lines] == [
        ("again", T0 + 1),
        ("old", T0),
        ("again", T0 + 2),
        ("late", T0 + PENDING_MAX_AGE_S + 1),
    ]
    assert all("miss_chunks_by_cause" not in line for line in lines)


def test_only_lookup_events_and_results_are_wanted(tmp_path: Path) -> None:
    sub = LookupHashLogSubscriber(writer(tmp_path, Clock()))
    assert sub.event_types == frozenset(
        {
            EventType.MP_LOOKUP.value,
            EventType.MP_LOOKUP_PREFETCH_END.value,
            EventType.CB_LOOKUP_END.value,
        }
    )


def test_blend_lookups_log_their_hits_by_class_and_segments(tmp_path: Path) -> None:
    w = writer(tmp_path, Clock())
    sub = LookupHashLogSubscriber(w)
    sub.on_event(
        CbLookupEnd(
            timestamp=5.0,
            request_id="r",
            model_name="m",
            cache_salt="",
            num_tokens=70,
            requested_tokens=64,
            hit_tokens=48,
            prefix_hit_tokens=16,
            non_prefix_hit_tokens=32,
            segmented_prefix_hit_tokens=0,
            prefix_chunks=1,
            fingerprint_hits=2,
            storage_hits=2,
            stale_chunks=0,
            no_gpu_context=False,
            polls=1,
            duration_s=0.001,
            segments=((48, 16, "ab"), (16, 32, "cd")),
            segmented_segments=((64, 64, "ef"),),
        )
    )
    sub.close()
    (line,) = w.files[0].read_text().splitlines()
    assert json.loads(line) == {
        "timestamp": 5.0,
        "request_id": "r",
        "model_name": "m",
        "event": "cb.lookup.end",
        "seq_len": 70,
        "prefix_hit_tokens": 16,
        "non_prefix_hit_tokens": 32,
        "segmented_prefix_hit_tokens": 0,
        "segments": [[48, 16, "0xab"], [16, 32, "0xcd"]],
        "segmented_segments": [[64, 64, "0xef"]],
    }


def test_rotation_by_size_is_checked_before_each_write(tmp_path: Path) -> None:
    w = writer(tmp_path, Clock(), max_size=25)
    line = b'{"x":"0123456789"}\n'  # 19 bytes
    for _ in range(5):
        assert w.write_line(line)
    # 19 < 25: the second line still goes to the first file (38 bytes), then rotate.
    sizes = [p.stat().st_size for p in w.files]
    assert sizes == [38, 38, 19]
    seqs = [int(NAME_PATTERN.match(p.name).group(2)) for p in w.files]  # type: ignore[union-attr]
    assert seqs == [0, 1, 2]


def test_rotation_by_age(tmp_path: Path) -> None:
    clock = Clock()
    w = writer(tmp_path, clock, rotation_interval_s=60.0)
    w.write_line(b"1\n")
    clock.now += 59.9
    w.write_line(b"2\n")
    clock.now += 0.1  # 60 s after opening: rotate
    w.write_line(b"3\n")
    names = [p.name for p in w.files]
    assert names == [
        "lookup_hashes_20231114_221320_000000.jsonl",
        "lookup_hashes_20231114_221420_000001.jsonl",
    ]
    assert [p.read_text() for p in w.files] == ["1\n2\n", "3\n"]


def test_max_files_counts_and_deletes_files_of_earlier_runs(tmp_path: Path) -> None:
    # Three files of an earlier run, plus files that are not ours.
    old = [tmp_path / file_name(T0 - 1000 + i, 40 + i) for i in range(3)]
    for i, path in enumerate(old):
        path.write_text("old\n")
        os.utime(path, (T0 - 1000 + i, T0 - 1000 + i))
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "lookup_hashes_broken.jsonl").write_text("keep me too")
    w = writer(tmp_path, Clock(), max_files=3, max_size=1)
    assert w.files == old
    w.write_line(b"a\n")  # a fourth file: the oldest old one goes
    assert not old[0].exists() and old[1].exists()
    # New names continue the sequence of the files found.
    assert w.current_path is not None
    assert w.current_path.name.endswith("_000043.jsonl")
    w.write_line(b"b\n")
    w.write_line(b"c\n")
    kept = sorted(p.name for p in tmp_path.iterdir() if NAME_PATTERN.match(p.name))
    assert len(kept) == 3
    assert all(not p.exists() for p in old)
    assert (tmp_path / "notes.txt").exists()
    assert (tmp_path / "lookup_hashes_broken.jsonl").exists()
    assert w.files_deleted == 3


def test_a_removed_directory_is_counted_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "logs"
    w = writer(directory, Clock(), max_size=1)
    assert w.write_line(b"a\n")
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    with caplog.at_level("WARNING", logger="lmcache.observability.lookup_hash_log"):
        assert not w.write_line(b"b\n")
        assert not w.write_line(b"c\n")
    assert w.write_errors == 2
    assert len(caplog.records) == 1  # rate limited
    assert "lookup-hash log write failed" in caplog.records[0].getMessage()
    # Once the directory is back, writing resumes with a fresh file.
    directory.mkdir()
    assert w.write_line(b"d\n")
    assert [p.read_text() for p in directory.iterdir()] == ["d\n"]


def test_a_full_disk_is_counted_not_raised(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    w = writer(tmp_path, Clock())
    assert w.write_line(b"ok\n")
    # Swap the open file for /dev/full: every write fails with ENOSPC.
    assert w._file is not None
    w._file.close()
    w._file = open("/dev/full", "wb")  # noqa: SIM115
    assert not w.write_line(b"lost\n")
    assert w.write_errors == 1
    assert w.current_path is None  # the next line starts a fresh file
    assert w.write_line(b"next\n")
    assert w.lines_written == 2


def test_an_unwritable_directory_fails_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = LookupHashLogSettings(
        lookup_hash_log_dir=str(blocker / "sub"),
        lookup_hash_log_rotation_interval=60.0,
        lookup_hash_log_rotation_max_size=100,
        lookup_hash_log_max_files=2,
    )
    context = SimpleNamespace(config=SimpleNamespace(plugin_settings=lambda model: settings))
    with pytest.raises(StartupError, match="--lookup-hash-log-dir"):
        build_lookup_hash_log(context)  # type: ignore[arg-type]


def test_lines_carry_what_the_default_engine_publishes(tmp_path: Path) -> None:
    """Through the bus, fed by the default engine's own event publisher."""
    import msgspec

    from lmcache_core.engine.request_events import RequestEvents
    from lmcache_core.engine.sessions import Session
    from lmcache_core.hashing import RequestHashes
    from lmcache_core.protocol.types import WireCacheKey

    bus = EventBus(queue_size=100)
    sub = LookupHashLogSubscriber(writer(tmp_path, Clock()))
    bus.subscribe(sub)
    tokens = list(range(1000, 1000 + 3 * 16 + 5))
    hasher = make_hasher("blake3")
    hashes = chunk_hashes(hasher, tokens, 16)
    key = WireCacheKey(
        model_name="m",
        world_size=1,
        worker_id=None,
        token_ids=msgspec.Raw(msgspec.msgpack.encode(tokens)),
        start=0,
        end=len(tokens),
        request_id="rq",
    )
    session = Session("rq", RequestHashes(hasher, 16), 0.0)
    RequestEvents(bus, 16).lookup_started(key, session, hashes)
    bus.drain()
    sub.close()
    (path,) = tmp_path.iterdir()
    (record,) = read_lines(path)
    assert record["request_id"] == "rq"
    assert record["chunk_hashes"] == ["0x" + h.hex() for h in hashes]
    assert all(re.fullmatch(r"0x[0-9a-f]{64}", str(h)) for h in record["chunk_hashes"])  # type: ignore[union-attr]
    assert record["seq_len"] == len(tokens)
    assert record["chunk_size"] == 16
