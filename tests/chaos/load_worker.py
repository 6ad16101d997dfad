"""One engine worker under chaos: a separate process that stores, reads back and journals.

Run as ``python -m tests.chaos.load_worker URL HTTP_URL JOURNAL SEED``. It registers a
CPU KV cache (shared memory) and loops until SIGTERM (or until it is SIGKILLed):

* store a fresh request of 1 to 3 chunks under a cache salt of its own, with
  KV bytes derived from ``(seed, n)`` alone, so any process can regenerate them;
* once the store is acknowledged, wait (bounded) until the persistent tier, L2
  adapter 1 (``fs``), lists every chunk of that salt: only then is the store
  *durable* and journalled as such (the chaos test checks afterwards that no
  durable store was lost);
* every other round, read a random earlier durable store back (lookup, prefetch
  status, retrieve) and compare the bytes: a hit with other bytes is corruption.

Every request is journalled with its start (``time.monotonic()``, one clock for
every process of the machine), its duration and its outcome, so the test can
tell a hang from a request that spanned a server restart. A restarted server
does not know the worker: its ping answers False and the worker registers again.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
import uuid
from typing import IO, Any

import httpx
import torch

from lmcache_core.client import CallTimeout, MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.protocol.errors import RemoteError
from tests.data_path.l2_helpers import BPC, CHUNK, small_layout

LAYOUT = small_layout(128)
READ_BLOCKS_FROM = 64
EXPLAIN_WAIT_S = 1.0
"""How long a missed read-back waits for its explanation to be recorded."""
"""Read-backs land in blocks 64.. (stores use 1..48), so each checks its own copy."""
DURABLE_WAIT_S = 5.0


def salt_of(seed: int, n: int) -> str:
    """The cache salt of store ``n`` of worker ``seed`` (one per store: its own listing)."""
    return f"chaos{seed}x{n}"


def chunks_of(n: int) -> int:
    """How many chunks store ``n`` holds."""
    return 1 + n % 3


def tokens_of(seed: int, n: int) -> list[int]:
    """The token ids of store ``n`` of worker ``seed``."""
    rng = random.Random(seed * 1_000_003 + n)
    return [rng.randrange(50_000) for _ in range(chunks_of(n) * CHUNK)]


def kv_of(seed: int, n: int) -> list[torch.Tensor]:
    """The KV blocks of store ``n``, per layer, as ``[2, blocks, ...]`` slices."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + n)
    shape = list(LAYOUT.layer_shape())
    shape[1] = chunks_of(n) * BPC
    return [
        torch.randn(shape, generator=generator).to(LAYOUT.dtype) for _ in range(LAYOUT.num_layers)
    ]


class Journal:
    """JSON lines, one per request and one per durable store, flushed at once."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, **record: Any) -> None:
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


class LoadWorker:
    """The loop described in the module docstring."""

    def __init__(self, url: str, http_url: str, journal: Journal, seed: int) -> None:
        self.client = MPClient(url, timeout=8.0)
        self.http = httpx.Client(base_url=http_url, timeout=2.0)
        self.worker = CpuKVWorker(self.client, LAYOUT, instance_id=uuid.uuid4().int >> 65)
        self.journal = journal
        self.seed = seed
        self.durable: list[int] = []
        self.rng = random.Random(seed)
        self.registered = False
        self.stopping = False
        self.last = ""
        """The outcome of the latest request: ``ok``, ``timeout`` or ``error:CODE``."""

    def call(self, op: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one request and journal it; its result (None when it failed, see :attr:`last`)."""
        started = time.monotonic()
        try:
            result = fn(*args, **kwargs)
            outcome = "ok"
        except CallTimeout:
            result, outcome = None, "timeout"
        except RemoteError as exc:
            result, outcome = None, f"error:{exc.code}"
        self.journal.write(op=op, t=started, dt=time.monotonic() - started, r=outcome)
        self.last = outcome
        return result

    def ensure_registered(self) -> bool:
        alive = self.call("ping", self.client.ping, self.worker.instance_id, timeout=8.0)
        if alive is True and self.registered:
            return True
        if alive is None:  # no answer: the server is down
            self.registered = False
            return False
        self.call("register", self.worker.register)
        self.registered = self.last == "ok"
        return self.registered

    def store(self, n: int) -> None:
        chunks = chunks_of(n)
        for layer, data in zip(self.worker.layers, kv_of(self.seed, n), strict=True):
            layer[:, 1 : 1 + chunks * BPC] = data
        salt = salt_of(self.seed, n)
        key = self.worker.key(
            tokens_of(self.seed, n), 0, chunks * CHUNK, uuid.uuid4().hex, cache_salt=salt
        )
        ok = self.call("store", self.worker.store, key, list(range(1, 1 + chunks * BPC)))
        if ok and self._wait_durable(salt, chunks):
            self.durable.append(n)
            self.journal.write(durable=[self.seed, n])

    def _wait_durable(self, salt: str, chunks: int) -> bool:
        deadline = time.monotonic() + DURABLE_WAIT_S
        while time.monotonic() < deadline and not self.stopping:
            try:
                listing = self.http.get(
                    "/cache/objects",
                    params={"tier": "l2", "adapter": "1", "cache_salt": salt, "page_size": 10},
                ).json()
                if listing.get("matched", 0) >= chunks:
                    return True
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        return False

    def read_back(self) -> None:
        n = self.rng.choice(self.durable)
        chunks = chunks_of(n)
        tokens, salt, request = tokens_of(self.seed, n), salt_of(self.seed, n), uuid.uuid4().hex
        key = self.worker.key(tokens, 0, chunks * CHUNK, request, worker=False, cache_salt=salt)
        self.call("lookup", self.client.lookup, key)
        if self.last != "ok":
            return
        hits = self.call("prefetch_status", self.client.wait_prefetch_status, request, 5.0)
        if not hits:
            self.journal.write(
                read=[self.seed, n], request=request, hits=0, chunks=chunks, **self.explain(request)
            )
            return
        got = min(int(hits), chunks)
        why = self.explain(request) if got < chunks else {}
        dst = list(range(READ_BLOCKS_FROM, READ_BLOCKS_FROM + got * BPC))
        for layer in self.worker.layers:
            layer[:, dst] = 0
        window = self.worker.key(tokens, 0, got * CHUNK, request, cache_salt=salt)
        ok = self.call("retrieve", self.worker.retrieve, window, dst)
        identical = None
        if ok:
            expected = kv_of(self.seed, n)
            identical = all(
                torch.equal(layer[:, dst], want[:, : got * BPC])
                for layer, want in zip(self.worker.layers, expected, strict=True)
            )
        self.call("end_session", self.client.end_session, request)
        self.journal.write(
            read=[self.seed, n],
            request=request,
            hits=got,
            chunks=chunks,
            ok=bool(ok),
            identical=identical,
            **why,
        )

    def explain(self, request: str) -> dict[str, Any]:
        """Why a read-back missed, asked of the server at once (``GET /lookups/{id}``).

        The explanation is recorded just after the lookup's result, so a 404 is
        retried briefly; an unreachable server (being restarted) is journalled as
        ``explain_error``, which the test excuses only for that reason.
        """
        deadline = time.monotonic() + EXPLAIN_WAIT_S
        while True:
            try:
                reply = self.http.get(f"/lookups/{request}")
                if reply.status_code == 200:
                    first = reply.json().get("first_miss") or {}
                    return {"cause": first.get("cause")}
                error = f"HTTP {reply.status_code}"
            except (httpx.HTTPError, ValueError) as exc:
                error = f"unreachable: {type(exc).__name__}"
            if time.monotonic() >= deadline:
                return {"explain_error": error}
            time.sleep(0.05)

    def run(self) -> None:
        n = 0
        while not self.stopping:
            if not self.ensure_registered():
                time.sleep(0.2)
                continue
            n += 1
            self.store(n)
            if self.durable and n % 2 == 0:
                self.read_back()
        self.worker.close()
        self.client.close()


def main(argv: list[str]) -> None:
    url, http_url, journal_path, seed = argv[0], argv[1], argv[2], int(argv[3])
    with open(journal_path, "a", encoding="utf-8") as stream:
        load = LoadWorker(url, http_url, Journal(stream), seed)

        def stop(*_: object) -> None:
            load.stopping = True

        signal.signal(signal.SIGTERM, stop)
        load.journal.write(started=seed, t=time.monotonic())
        load.run()


if __name__ == "__main__":
    main(sys.argv[1:])
