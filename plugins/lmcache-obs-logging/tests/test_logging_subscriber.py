"""The ``logging`` subscriber on its own: levels, lines, rate limits, summaries."""

from __future__ import annotations

import logging

import pytest
from lmcache_obs_logging.ratelimit import LineRateLimiter
from lmcache_obs_logging.subscriber import (
    DEBUG_LINES_PER_SECOND,
    INFO_LINES_PER_WINDOW,
    EventLogSubscriber,
)

from lmcache_core.observability.bus import EventBus
from lmcache_core.observability.events import Event, EventType
from lmcache_core.testing.subscriber_conformance import documented_event

T0 = 1_700_000_000.0


@pytest.fixture
def events_logger() -> logging.Logger:
    logger = logging.getLogger("tests.lmcache.events")
    logger.setLevel(logging.DEBUG)
    return logger


def make(logger: logging.Logger, level: int, summary_s: float = 10.0) -> EventLogSubscriber:
    logger.setLevel(level)
    return EventLogSubscriber(logger, summary_interval_s=summary_s)


def ev(event_type: EventType, ts: float = T0, **data: object) -> Event:
    """The record of ``event_type``: ``data``, and the suite's sample values elsewhere."""
    return documented_event(event_type, ts, **data)


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records]


def test_debug_lines_for_a_request(
    events_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    sub = make(events_logger, logging.DEBUG)
    ident = {"request_id": "r1", "model_name": "m", "cache_salt": ""}
    caplog.set_level(logging.DEBUG, logger=events_logger.name)
    sub.on_event(ev(EventType.MP_REQUEST_START, **ident))
    sub.on_event(
        ev(
            EventType.MP_LOOKUP_PREFETCH_END,
            requested_tokens=64,
            hit_tokens=32,
            l1_hit_tokens=16,
            l2_hit_tokens=16,
            duration_s=0.0021,
            **ident,
        )
    )
    sub.on_event(
        ev(
            EventType.MP_STORE_END,
            instance_id=7,
            chunks=4,
            stored_chunks=3,
            bytes=3 * 1024 * 1024,
            duration_s=0.5,
            ok=False,
            **ident,
        )
    )
    sub.on_event(ev(EventType.MP_REQUEST_END, duration_s=1.25, **ident))
    assert lines(caplog) == [
        (logging.DEBUG, "MP request start: request=r1 model=m"),
        (
            logging.DEBUG,
            "MP lookup end: request=r1 hit 32/64 tokens (L1 16, L2 16) in 2.1 ms",
        ),
        (
            logging.DEBUG,
            "MP store end: request=r1 instance=7 3/4 chunks, 3.0 MiB in 500.0 ms, FAILED",
        ),
        (logging.DEBUG, "MP request end: request=r1 after 1250.0 ms"),
    ]


def test_info_level_subscribes_only_to_rare_events(events_logger: logging.Logger) -> None:
    sub = make(events_logger, logging.INFO)
    assert sub.event_types is not None
    assert EventType.MP_STORE_START.value not in sub.event_types
    assert EventType.MP_LOOKUP.value not in sub.event_types
    assert EventType.L1_ALLOCATION_FAILED.value in sub.event_types
    assert EventType.L2_STORE_COMPLETED.value in sub.event_types
    # The bus then does not even queue per-request events.
    bus = EventBus(queue_size=10)
    bus.subscribe(sub)
    bus.publish(ev(EventType.MP_STORE_START, request_id="r"))
    assert bus.queue_depth() == 0
    bus.publish(ev(EventType.L1_ALLOCATION_FAILED, during="l1_store", key_count=1, bytes=10))
    assert bus.queue_depth() == 1


def test_warning_level_subscribes_to_nothing(events_logger: logging.Logger) -> None:
    assert make(events_logger, logging.WARNING).event_types == frozenset()


def test_failures_are_info_and_clean_l2_completions_debug(
    events_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    sub = make(events_logger, logging.INFO)
    caplog.set_level(logging.DEBUG, logger=events_logger.name)
    common = {"l2_name": "fs", "adapter_index": 0, "bytes_transferred": 2048, "duration_s": 0.01}
    sub.on_event(ev(EventType.L2_STORE_COMPLETED, succeeded_count=4, failed_count=0, **common))
    sub.on_event(ev(EventType.L2_STORE_COMPLETED, succeeded_count=3, failed_count=1, **common))
    sub.on_event(ev(EventType.L2_PREFETCH_FAILED, reason="l1_oom", key_count=5))
    sub.on_event(ev(EventType.L1_ALLOCATION_FAILED, during="l1_store", key_count=2, bytes=100))
    assert lines(caplog) == [
        (
            logging.INFO,
            "L2 store completed: adapter 0 (fs), 3 succeeded, 1 failed, 2.0 KiB in 10.0 ms",
        ),
        (logging.INFO, "L2 prefetch failed: l1_oom, 5 keys"),
        (logging.INFO, "L1 allocation failed during l1_store: 2 keys, 100 B"),
    ]


def test_debug_lines_are_rate_limited_and_report_what_was_suppressed(
    events_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    sub = make(events_logger, logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger=events_logger.name)
    burst = DEBUG_LINES_PER_SECOND + 30
    for i in range(burst):
        sub.on_event(ev(EventType.MP_STORE_START, T0 + i * 0.001, request_id=f"r{i}"))
    # Another type has its own budget.
    sub.on_event(ev(EventType.MP_RETRIEVE_START, T0 + 0.5, request_id="x"))
    assert len(caplog.records) == DEBUG_LINES_PER_SECOND + 1
    sub.on_event(ev(EventType.MP_STORE_START, T0 + 1.5, request_id="late"))
    last = caplog.records[-1].getMessage()
    assert last.startswith("MP store start: request=late")
    assert last.endswith(f"[30 more {EventType.MP_STORE_START.value} lines suppressed]")


def test_info_failures_are_rate_limited(
    events_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    sub = make(events_logger, logging.INFO)
    caplog.set_level(logging.INFO, logger=events_logger.name)
    for i in range(100):
        sub.on_event(ev(EventType.L2_PREFETCH_FAILED, T0 + i * 0.01, reason="l1_oom", key_count=1))
    assert len(caplog.records) == INFO_LINES_PER_WINDOW


def test_evictions_are_summarised_per_window_and_at_close(
    events_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    sub = make(events_logger, logging.INFO, summary_s=10.0)
    caplog.set_level(logging.INFO, logger=events_logger.name)
    for i in range(20):
        sub.on_event(
            ev(EventType.L1_KEYS_EVICTED, T0 + i * 0.1, key_count=3, bytes=1024, reason="eviction")
        )
    assert caplog.records == []  # at INFO, single evictions are not logged
    # The L1 controller's tick is the clock that closes the window.
    sub.on_event(ev(EventType.L1_EVICTION_LOOP_TICK, T0 + 10.0, usage=0.5, watermark=0.8))
    assert lines(caplog) == [
        (
            logging.INFO,
            "L1 evicted 60 keys (20.0 KiB) in 20 evictions over the last 10.0 s; "
            "reasons: eviction=60",
        )
    ]
    sub.on_event(ev(EventType.L2_KEYS_EVICTED, T0 + 11, key_count=4, l2_name="fs", adapter_index=1))
    sub.close()
    assert lines(caplog)[-1][1].startswith("L2 evicted 4 keys in 1 evictions")
    assert lines(caplog)[-1][1].endswith("adapters: 1:fs=4")
    sub.close()  # nothing left: no second line
    assert len(caplog.records) == 2


def test_rate_limiter_windows() -> None:
    limiter = LineRateLimiter(2, 1.0)
    assert [limiter.admit("a", t) for t in (0.0, 0.1, 0.2, 0.3)] == [0, 0, None, None]
    assert limiter.suppressed() == {"a": 2}
    assert limiter.admit("a", 1.0) == 2
    assert limiter.suppressed() == {}
    with pytest.raises(ValueError):
        LineRateLimiter(0, 1.0)
