"""The connector's statistics: cumulative counters per role, interval payloads for vLLM.

Each role (scheduler, worker) counts into a :class:`ConnectorStats`. vLLM asks both roles
for their stats every step (``get_kv_connector_stats``); an :class:`IntervalReporter`
answers with what changed since it was last asked, as a plain ``dict`` (the *payload*,
keys in :data:`METRICS` and :data:`LOOKUP_SECONDS`). vLLM then adds the payloads up with
``aggregate`` (the workers' in ``KVOutputAggregator``, the scheduler's on top in
``Scheduler.update_from_output``, the steps of one logging interval in
``KVConnectorLogging``), logs ``reduce()`` as its "KV Transfer metrics" line and hands
every step's payload to the Prometheus metrics. :class:`StatsPayload` holds that
arithmetic free of vLLM, so it is tested here and shared by the vLLM class
(``lmcache_vllm.connector.LMCacheConnectorStats``) and the replay harness.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lmcache_vllm.health import Health

# Bounded: the latency samples feed percentiles, not a full history.
_MAX_SAMPLES = 4096

LOOKUP_SECONDS = "lookup_seconds"
"""The payload key of the lookup-to-hit latencies (seconds, one per lookup answered)."""


class Role(StrEnum):
    """Which connector instance reports a metric."""

    SCHEDULER = "scheduler"
    WORKER = "worker"


@dataclass(frozen=True)
class Metric:
    """One counter of the payload.

    Attributes:
        name: The payload key (and the Prometheus name's stem).
        role: The connector instance that counts it.
        help: What it counts.
        seconds: A float amount of seconds (else an integer count).
    """

    name: str
    role: Role
    help: str
    seconds: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("lookups", Role.SCHEDULER, "Lookups started (degraded-mode misses included)."),
    Metric("lookup_tokens", Role.SCHEDULER, "Prompt tokens looked up (whole chunks)."),
    Metric("hit_tokens", Role.SCHEDULER, "Looked-up tokens the server held."),
    Metric(
        "lookups_degraded",
        Role.SCHEDULER,
        "Lookups answered 'miss' at once because the server was down (degraded mode).",
    ),
    Metric("lookup_errors", Role.SCHEDULER, "Lookups that failed (error or call timeout)."),
    Metric("lookup_timeouts", Role.SCHEDULER, "Lookups abandoned after lookup_timeout."),
    Metric(
        "planned_load_tokens",
        Role.SCHEDULER,
        "Hit tokens vLLM chose to load (num_external_tokens).",
    ),
    Metric("planned_store_tokens", Role.SCHEDULER, "Prompt tokens planned for storing."),
    Metric(
        "server_down_events",
        Role.SCHEDULER,
        "Scheduler switches to degraded mode (server down or too slow).",
    ),
    Metric("degraded_seconds", Role.SCHEDULER, "Seconds the scheduler was in degraded mode.", True),
    Metric("loads_ok", Role.WORKER, "Loads completed."),
    Metric(
        "loads_failed",
        Role.WORKER,
        "Loads that failed (reported to vLLM, which recomputes or fails them).",
    ),
    Metric(
        "load_failed_blocks",
        Role.WORKER,
        "KV blocks of failed loads (get_block_ids_with_load_errors: recomputed).",
    ),
    Metric("loaded_tokens", Role.WORKER, "Tokens of KV written into vLLM's cache by loads."),
    Metric("loaded_bytes", Role.WORKER, "Bytes of KV written into vLLM's cache by loads."),
    Metric("stores_ok", Role.WORKER, "Stores committed."),
    Metric(
        "stores_dropped",
        Role.WORKER,
        "Stores not done: server down, slow, out of room, or refused.",
    ),
    Metric(
        "stored_tokens",
        Role.WORKER,
        "Tokens of KV copied to the server (chunks it already held are skipped).",
    ),
    Metric("stored_bytes", Role.WORKER, "Bytes of KV copied to the server."),
    Metric(
        "worker_down_events",
        Role.WORKER,
        "Worker switches to degraded mode (summed over workers).",
    ),
    Metric(
        "worker_degraded_seconds",
        Role.WORKER,
        "Seconds workers were in degraded mode (summed over workers).",
        True,
    ),
    Metric(
        "reregistrations",
        Role.WORKER,
        "KV cache re-registrations after a server restart or an outage.",
    ),
)
"""Every counter of the payload, scheduler's first (the order of vLLM's log line)."""

_NAMES = tuple(metric.name for metric in METRICS)
_SECONDS = frozenset(metric.name for metric in METRICS if metric.seconds)


def empty_payload() -> dict[str, Any]:
    """A payload with every counter zero and no latency sample."""
    payload: dict[str, Any] = {name: (0.0 if name in _SECONDS else 0) for name in _NAMES}
    payload[LOOKUP_SECONDS] = []
    return payload


def normalise_payload(data: dict[str, Any] | None) -> dict[str, Any]:
    """A private copy of ``data`` with every key present.

    vLLM hands the same payload dict to its log and to its Prometheus logger: aggregating
    into it would count an interval twice, so a payload is copied before it is added to.

    Raises:
        ValueError: ``data`` has a key that is not ours (a payload of another connector).
    """
    payload = empty_payload()
    if not data:
        return payload
    unknown = set(data) - set(payload)
    if unknown:
        raise ValueError(f"not an lmcache_vllm stats payload: unknown keys {sorted(unknown)}")
    for name in _NAMES:
        payload[name] = data.get(name, payload[name])
    payload[LOOKUP_SECONDS] = [float(s) for s in data.get(LOOKUP_SECONDS, ())][-_MAX_SAMPLES:]
    return payload


def _percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending list."""
    rank = max(0, min(len(ordered) - 1, int(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


class StatsPayload:
    """``KVConnectorStats``' arithmetic on a payload in ``self.data`` (vLLM-free).

    A mixin: the subclass provides ``data`` (vLLM's ``KVConnectorStats`` dataclass field,
    or :class:`IntervalStats`' own).
    """

    data: dict[str, Any]

    def reset(self) -> None:
        """Zero every counter, drop the samples."""
        self.data = empty_payload()

    def aggregate(self, other: Any) -> Any:
        """Add ``other``'s payload to this one (sums; latency samples concatenated).

        Returns:
            ``self``, as vLLM's callers expect.

        Raises:
            TypeError: ``other`` is not an lmcache_vllm stats object.
        """
        if not isinstance(other, StatsPayload):
            raise TypeError(f"cannot aggregate {type(other).__name__} into lmcache_vllm stats")
        mine = normalise_payload(self.data)
        theirs = normalise_payload(other.data)
        for name in _NAMES:
            mine[name] += theirs[name]
        samples = mine[LOOKUP_SECONDS] + theirs[LOOKUP_SECONDS]
        mine[LOOKUP_SECONDS] = samples[-_MAX_SAMPLES:]
        self.data = mine
        return self

    def reduce(self) -> dict[str, int | float]:
        """The interval's summary for vLLM's "KV Transfer metrics" log line.

        Every counter (seconds rounded to ms), then ``hit_rate`` (hit over looked-up
        tokens) and, when lookups were answered, ``lookup_avg_ms``, ``lookup_p50_ms``,
        ``lookup_p90_ms`` and ``lookup_max_ms``.
        """
        data = normalise_payload(self.data)
        reduced: dict[str, int | float] = {}
        for name in _NAMES:
            value = data[name]
            reduced[name] = round(float(value), 3) if name in _SECONDS else int(value)
        looked = int(data["lookup_tokens"])
        reduced["hit_rate"] = round(int(data["hit_tokens"]) / looked, 4) if looked else 0.0
        samples = sorted(data[LOOKUP_SECONDS])
        if samples:
            reduced["lookup_avg_ms"] = round(sum(samples) / len(samples) * 1e3, 3)
            reduced["lookup_p50_ms"] = round(_percentile(samples, 0.5) * 1e3, 3)
            reduced["lookup_p90_ms"] = round(_percentile(samples, 0.9) * 1e3, 3)
            reduced["lookup_max_ms"] = round(samples[-1] * 1e3, 3)
        return reduced

    def is_empty(self) -> bool:
        """Nothing counted and no sample: vLLM neither logs nor forwards it."""
        data = self.data or {}
        return not data.get(LOOKUP_SECONDS) and not any(data.get(name) for name in _NAMES)


@dataclass
class IntervalStats(StatsPayload):
    """A payload outside vLLM (the replay harness and the tests).

    Attributes:
        data: The payload.
    """

    data: dict[str, Any] = field(default_factory=empty_payload)


@dataclass
class ConnectorStats:
    """Scheduler- and worker-side cumulative counters (each role fills its own).

    Attributes:
        lookups: Lookups started (including ones answered "miss" without asking).
        lookups_degraded: Lookups answered "miss" because the server was down.
        lookup_errors: Lookups that failed (error reply or timeout).
        lookup_timeouts: Lookups abandoned after ``lookup_timeout``.
        lookup_tokens: Tokens asked for.
        hit_tokens: Tokens found.
        planned_load_tokens: Tokens vLLM chose to load.
        planned_store_tokens: Tokens planned for storing.
        lookup_seconds: Submission-to-answer latencies (the last 4096).
        new_lookup_seconds: Latencies not yet reported to vLLM (at most 4096).
        loads_ok: Loads that completed (worker).
        loads_failed: Loads reported failed (worker; vLLM recomputes or fails them).
        load_failed_blocks: Blocks of the failed loads (worker).
        loaded_tokens: Tokens of KV written into vLLM's blocks (worker).
        loaded_bytes: Bytes of KV written into vLLM's blocks (worker).
        stores_ok: Stores committed (worker).
        stores_dropped: Stores not done: server down, slow or out of room (worker).
        stored_tokens: Tokens of KV copied to the server (worker).
        stored_bytes: Bytes of KV copied to the server (worker).
    """

    lookups: int = 0
    lookups_degraded: int = 0
    lookup_errors: int = 0
    lookup_timeouts: int = 0
    lookup_tokens: int = 0
    hit_tokens: int = 0
    planned_load_tokens: int = 0
    planned_store_tokens: int = 0
    lookup_seconds: list[float] = field(default_factory=list)
    new_lookup_seconds: list[float] = field(default_factory=list)
    loads_ok: int = 0
    loads_failed: int = 0
    load_failed_blocks: int = 0
    loaded_tokens: int = 0
    loaded_bytes: int = 0
    stores_ok: int = 0
    stores_dropped: int = 0
    stored_tokens: int = 0
    stored_bytes: int = 0

    def add_lookup_latency(self, seconds: float) -> None:
        """Record one lookup latency (the oldest sample goes when full)."""
        for samples in (self.lookup_seconds, self.new_lookup_seconds):
            if len(samples) >= _MAX_SAMPLES:
                del samples[0]
            samples.append(seconds)

    def take_new_lookup_seconds(self) -> list[float]:
        """The latencies recorded since the last call."""
        taken, self.new_lookup_seconds = self.new_lookup_seconds, []
        return taken

    def snapshot(self) -> dict[str, Any]:
        """The counters as a plain dict (latencies summarised)."""
        values = {
            k: v for k, v in vars(self).items() if k not in ("lookup_seconds", "new_lookup_seconds")
        }
        samples = sorted(self.lookup_seconds)
        if samples:
            values["lookup_p50_seconds"] = samples[len(samples) // 2]
            values["lookup_max_seconds"] = samples[-1]
        values["hit_rate"] = self.hit_tokens / self.lookup_tokens if self.lookup_tokens else 0.0
        return values


class IntervalReporter:
    """One role's payloads: what its counters and health did since the last call.

    Args:
        role: The role whose metrics (:data:`METRICS`) it reports.
        stats: The role's counters.
        health: The role's view of the server.
    """

    def __init__(self, role: Role, stats: ConnectorStats, health: Health) -> None:
        self.role = role
        self.stats = stats
        self.health = health
        self._last: dict[str, float] = {}

    def _cumulative(self, now: float) -> dict[str, float]:
        health = self.health.stats
        degraded = self.health.degraded_seconds(now)
        if self.role is Role.SCHEDULER:
            extra = {"server_down_events": health.went_down, "degraded_seconds": degraded}
        else:
            extra = {
                "worker_down_events": health.went_down,
                "worker_degraded_seconds": degraded,
                "reregistrations": health.reregistrations,
            }
        values: dict[str, float] = {}
        for metric in METRICS:
            if metric.role is self.role:
                values[metric.name] = extra.get(metric.name, getattr(self.stats, metric.name, 0))
        return values

    def take(self, now: float | None = None) -> dict[str, Any]:
        """The payload of the interval since the last call (every key present)."""
        current = self._cumulative(time.monotonic() if now is None else now)
        payload = empty_payload()
        for name, value in current.items():
            delta = value - self._last.get(name, 0)
            payload[name] = float(delta) if name in _SECONDS else int(delta)
        self._last = current
        payload[LOOKUP_SECONDS] = self.stats.take_new_lookup_seconds()
        return payload
