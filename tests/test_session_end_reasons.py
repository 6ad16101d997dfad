"""Every way a session ends is reported once, with its reason, after its locks are released."""

from __future__ import annotations

from lmcache_core.engine.sessions import Session, SessionTable
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.hashing import make_hasher
from lmcache_core.storage.keys import ObjectKey


def test_each_end_is_reported_with_its_reason() -> None:
    now = [0.0]
    released: list[dict[ObjectKey, int]] = []
    ended: list[tuple[str, str, int]] = []

    def on_end(session: Session, reason: str) -> None:
        ended.append((session.request_id, reason, len(released)))

    table = SessionTable(
        10.0,
        TokenHashCache(make_hasher("builtin"), 16).new_request,
        released.append,
        clock=lambda: now[0],
        capacity=2,
        on_end=on_end,
    )
    key = ObjectKey(b"h", "m", 0)
    table.get("a").take_locks([key], 1, deadline=100.0)
    table.end("a")
    assert ended == [("a", "end_session", 1)]  # after its lock was released

    table.get("b")
    now[0] = 20.0
    table.get("c")
    assert table.expire() == 1
    table.get("d")
    table.get("e")  # over capacity: the least recently active ("c") goes
    table.stop(1.0)
    assert [(rid, reason) for rid, reason, _ in ended] == [
        ("a", "end_session"),
        ("b", "expired"),
        ("c", "displaced"),
        ("d", "shutdown"),
        ("e", "shutdown"),
    ]
    assert table.end("a") is None and len(ended) == 5  # an unknown request is not reported
