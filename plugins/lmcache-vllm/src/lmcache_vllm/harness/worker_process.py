"""The worker process of the replay harness: a vLLM-shaped KV cache and a real WorkerSide.

Run as ``python -m lmcache_vllm.harness.worker_process``. It reads length-prefixed
msgpack commands on stdin and answers each on stdout (logs go to stderr):

* ``init``: allocate the KV cache as vLLM 0.32+ does (one int8 buffer for all layers,
  per-layer ``[blocks, heads, block_size, 2 * head]`` views whose strides follow the
  layout: ``LBHNC`` or ``LBNHC``), build a :class:`~lmcache_vllm.worker.WorkerSide` and
  register;
* ``step``: one engine step: ``start_load_kv`` with the scheduler's plan, check the
  loaded tokens against the values a forward pass would have written, "forward" (write
  deterministic KV for the scheduled tokens), ``wait_for_save``, ``get_finished``,
  ``get_block_ids_with_load_errors`` and the step's connector stats payload;
* ``beat``: send one heartbeat ping now and return at once (a test puts a worker call
  in flight with it, for example while the server is stopped);
* ``health``, ``shutdown_side`` (the process stays), ``shutdown``.

The KV value of a token depends only on its id, its position, the layer and the head,
so any two requests sharing a prefix compute the same KV there: a load is correct
exactly when the loaded blocks hold those values.
"""

from __future__ import annotations

import concurrent.futures
import struct
import sys
from typing import Any, BinaryIO

import msgspec
import torch

from lmcache_vllm.metadata import decode_plan
from lmcache_vllm.settings import ConnectorSettings
from lmcache_vllm.stats import IntervalStats
from lmcache_vllm.worker import WorkerSide

_HEADER = struct.Struct("!I")


def read_frame(stream: BinaryIO) -> Any:
    """One length-prefixed msgpack message (None at end of stream)."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (length,) = _HEADER.unpack(header)
    return msgspec.msgpack.decode(stream.read(length))


def write_frame(stream: BinaryIO, message: Any) -> None:
    """Write one length-prefixed msgpack message and flush."""
    data = msgspec.msgpack.encode(message)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def allocate_kv(
    layers: int, blocks: int, heads: int, block: int, head: int, layout: str
) -> dict[str, torch.Tensor]:
    """Per-layer views over one buffer, as ``vllm/v1/worker/utils.py`` allocates them."""
    content = 2 * head
    backing = torch.zeros(layers * blocks * heads * block * content, dtype=torch.float32)
    if layout == "LBHNC":
        full = backing.view(layers, blocks, heads, block, content)
    elif layout == "LBNHC":
        full = backing.view(layers, blocks, block, heads, content).permute(0, 1, 3, 2, 4)
    else:
        raise ValueError(f"unsupported layout {layout!r}")
    return {f"model.layers.{i}.self_attn.attn": full[i] for i in range(layers)}


def expected_kv(
    tokens: torch.Tensor, positions: torch.Tensor, layer: int, heads: int, content: int
) -> torch.Tensor:
    """The KV a forward pass writes: ``[len(tokens), heads, content]``."""
    base = (tokens * 131 + positions * 7 + layer * 3).remainder(997).to(torch.float32)
    head = torch.arange(heads, dtype=torch.float32).view(1, heads, 1)
    column = torch.arange(content, dtype=torch.float32).view(1, 1, content)
    return base.view(-1, 1, 1) / 997.0 + head * 0.25 + column * 1e-3


class HarnessWorker:
    """State of the worker process."""

    def __init__(self) -> None:
        self.side: WorkerSide | None = None
        self.kv: dict[str, torch.Tensor] = {}
        self.block = 0
        self.beats: list[concurrent.futures.Future[None]] = []

    def init(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Allocate the KV cache, build and register a worker side."""
        if self.side is not None:
            self.side.shutdown()
        settings = ConnectorSettings.from_extra_config(msg["extra_config"])
        self.block = int(msg["block_size"])
        self.kv = allocate_kv(
            msg["layers"], msg["blocks"], msg["heads"], self.block, msg["head"], msg["layout"]
        )
        self.side = WorkerSide(
            settings,
            model_name=msg["model"],
            world_size=1,
            worker_id=0,
            block_size=self.block,
        )
        self.side.register_kv_caches(self.kv)
        return {"instance_id": self.side.instance_id, "chunk_size": self.side.chunk_size}

    def _positions(
        self, tokens: list[int], blocks: list[int], start: int, end: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        positions = torch.arange(start, end)
        ids = torch.tensor(tokens[start:end], dtype=torch.long)
        block_index = torch.tensor(blocks, dtype=torch.long)[positions // self.block]
        return ids, positions, block_index

    def forward(self, tokens: list[int], blocks: list[int], start: int, end: int) -> None:
        """Write the KV of tokens ``[start, end)``."""
        if end <= start:
            return
        ids, positions, block_index = self._positions(tokens, blocks, start, end)
        slots = positions % self.block
        for number, layer in enumerate(self.kv.values()):
            heads, content = layer.shape[1], layer.shape[3]
            values = expected_kv(ids, positions, number, heads, content)
            layer[block_index, :, slots, :] = values

    def mismatches(self, tokens: list[int], blocks: list[int], start: int, end: int) -> int:
        """Tokens of ``[start, end)`` whose KV differs from what a forward pass writes."""
        if end <= start:
            return 0
        ids, positions, block_index = self._positions(tokens, blocks, start, end)
        slots = positions % self.block
        bad = torch.zeros(end - start, dtype=torch.bool)
        for number, layer in enumerate(self.kv.values()):
            heads, content = layer.shape[1], layer.shape[3]
            values = expected_kv(ids, positions, number, heads, content)
            bad |= (layer[block_index, :, slots, :] != values).flatten(1).any(1)
        return int(bad.sum())

    def step(self, msg: dict[str, Any]) -> dict[str, Any]:
        """One engine step with the scheduler's plan; what the worker reports."""
        side = self.side
        assert side is not None
        plan = decode_plan(msg["plan"])
        side.start_load_kv(plan)
        errors = side.get_block_ids_with_load_errors()
        failed = side.take_failed_requests()
        checked: dict[str, int] = {}
        for op in plan.loads:
            if op.request_id in failed:
                continue
            start = op.start + op.skip_first_n_tokens
            checked[op.request_id] = self.mismatches(op.token_ids, op.block_ids[0], start, op.end)
        for item in msg["forward"]:
            self.forward(item["tokens"], item["blocks"], item["start"], item["end"])
        side.wait_for_save(plan)
        sending, recving = side.get_finished(msg["finished"])
        # What vLLM's model runner sends each step: get_kv_connector_stats (None if empty).
        kv_stats = IntervalStats(side.take_interval_stats())
        return {
            "kv_stats": None if kv_stats.is_empty() else kv_stats.data,
            "sending": sorted(sending or ()),
            "recving": sorted(recving or ()),
            "errors": sorted(errors),
            "failed": sorted(failed),
            "load_mismatches": checked,
            "healthy": side.health.healthy,
        }

    def beat(self, _msg: dict[str, Any]) -> dict[str, Any]:
        """Start one heartbeat ping on the worker's loop; its outcome shows in ``health``."""
        side = self.side
        assert side is not None and side.heartbeat is not None
        self.beats = [b for b in self.beats if not b.done()]
        self.beats.append(side.client.submit(side.heartbeat.beat()))
        return {}

    def health(self, _msg: dict[str, Any]) -> dict[str, Any]:
        """The worker side's health and counters."""
        side = self.side
        assert side is not None
        return {
            "healthy": side.health.healthy,
            "beats_pending": sum(not b.done() for b in self.beats),
            "health": msgspec.to_builtins(vars(side.health.stats)),
            "stats": side.stats.snapshot(),
        }

    def shutdown_side(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Shut the worker side down; the process keeps serving."""
        return self.shutdown(msg)

    def shutdown(self, _msg: dict[str, Any]) -> dict[str, Any]:
        """Shut the worker side down."""
        if self.side is not None:
            self.side.shutdown()
            self.side = None
        return {}


def main() -> None:
    """Serve commands until ``shutdown`` or end of input."""
    worker = HarnessWorker()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        msg = read_frame(stdin)
        if msg is None:
            worker.shutdown({})
            return
        command = msg["command"]
        try:
            reply = {"ok": True, **getattr(worker, command)(msg)}
        except Exception as exc:  # noqa: BLE001 - reported to the harness, which fails the test
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        write_frame(stdout, reply)
        if command == "shutdown":
            return


if __name__ == "__main__":
    main()
