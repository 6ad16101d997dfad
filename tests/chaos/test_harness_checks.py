"""The chaos run's checks can fail: hangs, RSS growth and misses on hand-made journals."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.harness import (
    HANG_AFTER_S,
    Faults,
    Journals,
    hangs,
    misses,
    read_journals,
    rss_growth,
    unexplained,
)


def _request(t: float, dt: float, result: str = "ok") -> dict[str, object]:
    return {"op": "store", "t": t, "dt": dt, "r": result}


def test_a_slow_answer_or_a_timeout_is_a_hang_unless_it_spans_a_server_restart() -> None:
    faults = Faults(down=[(100.0, 110.0)])
    slow = _request(10.0, HANG_AFTER_S + 0.1)
    timed_out = _request(20.0, 8.0, "timeout")
    across_restart = _request(98.0, 14.0, "timeout")
    answered_by_the_new_server = _request(105.0, 7.0)
    quick = _request(30.0, 0.2)
    journals = Journals(
        [slow, timed_out, across_restart, answered_by_the_new_server, quick], [], []
    )
    assert hangs(journals, faults) == [slow, timed_out]


def test_rss_growth_is_measured_within_each_server_incarnation() -> None:
    assert rss_growth([(1, 100), (1, 150), (2, 10), (2, 300)]) == 290
    assert rss_growth([(1, 100)]) == 0


def test_misses_are_read_backs_short_of_their_chunks() -> None:
    short = {"read": [1, 2], "request": "r1", "hits": 1, "chunks": 3}
    full = {"read": [1, 3], "request": "r2", "hits": 2, "chunks": 2}
    assert misses(Journals([], [], [short, full])) == [short]


def test_a_torn_last_line_of_a_killed_worker_is_skipped(tmp_path: Path) -> None:
    journal = tmp_path / "w.jsonl"
    journal.write_text('{"durable": [1, 4]}\n{"op": "store", "t": 1.0, "dt": 0.1, "r": "ok"}\n{"op')
    read = read_journals([journal, tmp_path / "missing.jsonl"])
    assert read.durable == [(1, 4)] and len(read.requests) == 1


def test_a_miss_without_a_cause_is_unexplained_unless_the_server_was_down() -> None:
    explained = {"read": [1, 2], "hits": 0, "chunks": 2, "cause": "evicted"}
    server_down = {
        "read": [1, 3],
        "hits": 1,
        "chunks": 2,
        "explain_error": "unreachable: ConnectError",
    }
    not_recorded = {"read": [1, 4], "hits": 0, "chunks": 1, "explain_error": "HTTP 404"}
    silent = {"read": [1, 5], "hits": 0, "chunks": 1, "cause": None}
    assert unexplained([explained, server_down, not_recorded, silent]) == [not_recorded, silent]
