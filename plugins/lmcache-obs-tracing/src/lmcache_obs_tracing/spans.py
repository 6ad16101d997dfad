"""Request spans built from start/end event pairs, with bounded open state.

A root span ``request`` lives from ``mp.request.start`` to ``mp.request.end`` of a
request id (the engine's session). ``mp.lookup_prefetch``, ``mp.store`` and
``mp.retrieve`` spans are its children, each from its start event to the matching
end event; their times are the events' own timestamps, so the spans show when the
work happened, not when the bus delivered it.

Nothing may stay open for ever: a session can expire without ``end_session``, an
end event can be dropped by a full bus. So roots idle for longer than the
session TTL, and children open for longer than it, are ended (with the attribute
``lmcache.end_reason``), at most :data:`MAX_OPEN_ROOTS` roots and
:data:`MAX_OPEN_CHILDREN` children are open at once (the least recently active
are ended first), and :meth:`RequestSpans.close` ends whatever is left.
"""

from __future__ import annotations

import itertools
import json
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from lmcache_core.observability.events import (
    Event,
    EventType,
    MpLookupPrefetchEnd,
    MpRequestEnd,
    MpRequestStart,
    MpRetrieveEnd,
    MpStoreEnd,
    RequestEvent,
    TransferEvent,
    as_builtins,
    event_fields,
)

ROOT_NAME = "request"

CHILDREN: Mapping[str, tuple[str, str]] = {
    EventType.MP_LOOKUP_PREFETCH_START.value: ("mp.lookup_prefetch", "start"),
    EventType.MP_LOOKUP_PREFETCH_END.value: ("mp.lookup_prefetch", "end"),
    EventType.MP_STORE_START.value: ("mp.store", "start"),
    EventType.MP_STORE_END.value: ("mp.store", "end"),
    EventType.MP_RETRIEVE_START.value: ("mp.retrieve", "start"),
    EventType.MP_RETRIEVE_END.value: ("mp.retrieve", "end"),
}
"""Event type -> (child span name, which end of the span it is)."""

MAX_OPEN_ROOTS = 10_000
MAX_OPEN_CHILDREN = 20_000
SWEEP_INTERVAL_SECONDS = 1.0
"""Idle roots and abandoned children are looked for at most this often."""

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

ChildKey = tuple[str, str, Any]
"""(span name, request id, worker instance id): one worker's transfers arrive in order."""


def to_attribute(value: Any) -> AttributeValue | None:
    """An event field as a span attribute (``None``: left out).

    Numbers, booleans and strings stay as they are; anything else (dicts, lists)
    becomes compact JSON.
    """
    if value is None:
        return None
    if isinstance(value, bool | float | str):
        return value
    if isinstance(value, int):
        # OTLP integers are 64-bit; a larger id would fail the whole export.
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    return json.dumps(value, separators=(",", ":"), default=_json_default, sort_keys=True)


def _json_default(value: Any) -> Any:
    # Nested records (a lookup's L2 hit sources) export as the objects they always were.
    built = as_builtins(value)
    return built if built is not value else str(value)


def attributes_of(event: Event) -> dict[str, AttributeValue]:
    """Every metadata field of ``event`` (not its timestamp) as attributes, plus ``session_id``."""
    attributes: dict[str, AttributeValue] = {}
    for name in event_fields(type(event)):
        converted = to_attribute(getattr(event, name))
        if converted is not None:
            attributes[name] = converted
    if isinstance(event, RequestEvent):
        attributes["session_id"] = event.request_id
    return attributes


def nanos(seconds: float) -> int:
    """Epoch seconds as the integer nanoseconds OpenTelemetry wants."""
    return int(seconds * 1_000_000_000)


def _instance_of(event: RequestEvent) -> int | None:
    """The worker of a store or retrieve (lookups have none: one per request at a time)."""
    return event.instance_id if isinstance(event, TransferEvent) else None


END_REASONS = {"end_session": "end", "expired": "session_expired"}
"""The server's session end reasons, in this module's words (others are kept as they are)."""


@dataclass
class _Root:
    span: Span
    last_seen: float
    hit_tokens: int = 0
    requested_tokens: int = 0


@dataclass
class _Child:
    serial: int
    key: ChildKey
    span: Span
    started: float


@dataclass
class SpanStats:
    """What happened to spans, for tests and diagnostics.

    Attributes:
        roots_started: ``request`` spans opened.
        children_started: Child spans opened.
        ended: Spans ended, per reason (``end`` for a matching end event).
        unmatched_ends: End events without an open start (dropped, or ended early).
    """

    roots_started: int = 0
    children_started: int = 0
    ended: dict[str, int] = field(default_factory=dict)
    unmatched_ends: int = 0


class RequestSpans:
    """Turns request events into spans on ``tracer``.

    Args:
        tracer: The tracer spans are made with.
        idle_ttl_s: A root is ended after this long without an event of its request
            (the server's ``--session-ttl-seconds``), a child after this long open.
        max_roots: Most ``request`` spans open at once.
        max_children: Most child spans open at once.
    """

    def __init__(
        self,
        tracer: Tracer,
        idle_ttl_s: float,
        max_roots: int = MAX_OPEN_ROOTS,
        max_children: int = MAX_OPEN_CHILDREN,
    ) -> None:
        self.tracer = tracer
        self.idle_ttl_s = idle_ttl_s
        self.max_roots = max_roots
        self.max_children = max_children
        self.stats = SpanStats()
        self._roots: OrderedDict[str, _Root] = OrderedDict()
        self._children: OrderedDict[int, _Child] = OrderedDict()
        self._pending: dict[ChildKey, deque[_Child]] = {}
        self._serials = itertools.count()
        self._last_sweep: float | None = None

    @property
    def open_roots(self) -> int:
        """``request`` spans open now."""
        return len(self._roots)

    @property
    def open_children(self) -> int:
        """Child spans open now."""
        return len(self._children)

    # -- events ----------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """Apply one event (any type: others only advance the sweep clock)."""
        if isinstance(event, MpRequestStart):
            self._start_root(event)
        elif isinstance(event, MpRequestEnd):
            self._end_root(event)
        elif isinstance(event, RequestEvent) and event.type in CHILDREN:
            name, end = CHILDREN[event.type]
            if end == "start":
                self._start_child(name, event)
            else:
                self._end_child(name, event)
        self.sweep(event.timestamp)

    def _start_root(self, event: MpRequestStart) -> None:
        request_id = event.request_id
        previous = self._roots.pop(request_id, None)
        if previous is not None:  # a reused request id: the old root is over
            self._finish(previous.span, previous.last_seen, "replaced")
        span = self.tracer.start_span(
            ROOT_NAME,
            context=Context(),  # always a new trace
            start_time=nanos(event.timestamp),
            attributes=attributes_of(event),
        )
        self._roots[request_id] = _Root(span, event.timestamp)
        self.stats.roots_started += 1
        while len(self._roots) > self.max_roots:
            _, oldest = self._roots.popitem(last=False)
            self._finish_root(oldest, oldest.last_seen, "evicted")

    def _end_root(self, event: MpRequestEnd) -> None:
        root = self._roots.pop(event.request_id, None)
        if root is None:
            self.stats.unmatched_ends += 1
            return
        root.span.set_attributes(attributes_of(event))
        # The server says why the session ended; a normal end_session is plain "end".
        reason = event.end_reason
        self._finish_root(root, event.timestamp, END_REASONS.get(reason, reason))

    def _finish_root(self, root: _Root, end: float, reason: str) -> None:
        requested = root.requested_tokens
        root.span.set_attributes(
            {
                "hit_tokens": root.hit_tokens,
                "requested_tokens": requested,
                "hit_rate": root.hit_tokens / requested if requested else 0.0,
            }
        )
        self._finish(root.span, end, reason)

    def _touch(self, request_id: str, now: float) -> _Root | None:
        root = self._roots.get(request_id)
        if root is not None:
            root.last_seen = max(root.last_seen, now)
            self._roots.move_to_end(request_id)
        return root

    def _start_child(self, name: str, event: RequestEvent) -> None:
        request_id = event.request_id
        root = self._touch(request_id, event.timestamp)
        # Without an open root (a store under its own request id, or a root already
        # ended) the span starts a trace of its own; session_id still links it.
        parent = trace.set_span_in_context(root.span) if root is not None else Context()
        span = self.tracer.start_span(
            name, context=parent, start_time=nanos(event.timestamp), attributes=attributes_of(event)
        )
        key: ChildKey = (name, request_id, _instance_of(event))
        child = _Child(next(self._serials), key, span, event.timestamp)
        self._children[child.serial] = child
        self._pending.setdefault(key, deque()).append(child)
        self.stats.children_started += 1
        while len(self._children) > self.max_children:
            _, oldest = self._children.popitem(last=False)
            self._unlink(oldest)
            self._finish(oldest.span, oldest.started, "evicted")

    def _end_child(self, name: str, event: RequestEvent) -> None:
        request_id = event.request_id
        root = self._touch(request_id, event.timestamp)
        key: ChildKey = (name, request_id, _instance_of(event))
        queue = self._pending.get(key)
        if not queue:
            self.stats.unmatched_ends += 1
            return
        child = queue.popleft()
        if not queue:
            del self._pending[key]
        del self._children[child.serial]
        child.span.set_attributes(attributes_of(event))
        if isinstance(event, MpStoreEnd | MpRetrieveEnd) and not event.ok:
            child.span.set_status(Status(StatusCode.ERROR, f"{name} failed"))
        if isinstance(event, MpLookupPrefetchEnd) and event.first_miss is not None:
            # Flat copies of the nested record, so a trace query can filter on them.
            child.span.set_attributes(
                {
                    "first_miss_cause": event.first_miss.cause,
                    "first_miss_chunk": event.first_miss.chunk,
                }
            )
        if root is not None and isinstance(event, MpLookupPrefetchEnd):
            # The latest lookup of the request decides its hit rate (a new lookup
            # replaces the previous one on the server as well).
            root.hit_tokens = event.hit_tokens
            root.requested_tokens = event.requested_tokens
        self._finish(child.span, event.timestamp, "end")

    def _unlink(self, child: _Child) -> None:
        queue = self._pending.get(child.key)
        if queue is not None:
            queue.remove(child)
            if not queue:
                del self._pending[child.key]

    # -- bounds ----------------------------------------------------------------------

    def sweep(self, now: float, *, force: bool = False) -> None:
        """End idle roots and abandoned children (at most once a second unless ``force``)."""
        last = self._last_sweep
        if not force and last is not None and 0 <= now - last < SWEEP_INTERVAL_SECONDS:
            return
        self._last_sweep = now
        cutoff = now - self.idle_ttl_s
        idle = [rid for rid, root in self._roots.items() if root.last_seen < cutoff]
        for request_id in idle:
            root = self._roots.pop(request_id)
            self._finish_root(root, root.last_seen, "session_expired")
        stale = [child for child in self._children.values() if child.started < cutoff]
        for child in stale:
            del self._children[child.serial]
            self._unlink(child)
            self._finish(child.span, child.started, "abandoned")

    def close(self, now: float) -> None:
        """End every open span at ``now`` (shutdown)."""
        for child in list(self._children.values()):
            self._finish(child.span, now, "shutdown")
        self._children.clear()
        self._pending.clear()
        while self._roots:
            _, root = self._roots.popitem(last=False)
            self._finish_root(root, now, "shutdown")

    def _finish(self, span: Span, end: float, reason: str) -> None:
        if reason != "end":
            span.set_attribute("lmcache.end_reason", reason)
        span.end(end_time=nanos(end))
        self.stats.ended[reason] = self.stats.ended.get(reason, 0) + 1
