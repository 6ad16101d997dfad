"""The reorder planner: upstream's measured scenarios (reference §10), real index and hasher."""

from __future__ import annotations

import time

import msgspec
import numpy as np
from lmcache_engine_blend.fingerprint import FingerprintIndex, Namespace
from lmcache_engine_blend.reorder import LMIN, PromptStore, plan

from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.hashing import make_hasher

C = 16
NS: Namespace = ("model", 1, "")


def doc(seed: int, n: int = 2 * C) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(1, 50000, n)]


SYS, D1, D2, D3, Q = doc(1), doc(2), doc(3), doc(4), doc(5, 20)
SYS2 = doc(6)


class Server:
    """What the blend store does for the planner: fingerprints and prompt records."""

    def __init__(self, max_tokens: int = 1 << 24) -> None:
        self.index = FingerprintIndex(C)
        self.prompts = PromptStore(C, max_tokens)
        self.hashes = TokenHashCache(make_hasher("blake3"), C)

    def chain(self, tokens: list[int]) -> list[bytes]:
        return self.hashes.hashes(msgspec.msgpack.encode(tokens), len(tokens) // C)

    def store(self, rid: str, tokens: list[int], namespace: Namespace = NS) -> None:
        chain = self.chain(tokens)
        arr = np.asarray(tokens[: len(chain) * C], dtype=np.uint64)
        self.index.register(namespace, arr, chain, 1, 0)
        self.prompts.record(namespace, rid, arr, dict(enumerate(chain)))

    def plan(self, tokens: list[int], keep: int = 0, budget_ms: int = 1000) -> list[int]:
        return plan(self.prompts, self.index, NS, tokens, self.chain(tokens), keep, budget_ms)


def test_a_reordered_prompt_is_put_back_in_the_stored_order_question_last() -> None:
    server = Server()
    server.store("h", SYS + D1 + D2 + D3)
    planned = server.plan(SYS + D3 + D1 + D2 + Q)
    assert planned == SYS + D1 + D2 + D3 + Q
    # The plan is a prefix hit of the whole stored prompt.
    assert server.chain(planned)[:8] == server.chain(SYS + D1 + D2 + D3)


def test_keep_prefix_keeps_the_head_in_place_and_must_agree_with_the_stored_one() -> None:
    server = Server()
    server.store("h", SYS + D1 + D2 + D3)
    assert server.plan(SYS + D3 + D1 + D2 + Q, keep=len(SYS)) == SYS + D1 + D2 + D3 + Q
    # A head that the stored prompt does not start with: nothing to plan.
    assert server.plan(D3 + SYS + D1 + D2 + Q, keep=len(SYS)) == []


def test_the_stored_prompt_itself_and_an_absent_head_are_kept() -> None:
    server = Server()
    server.store("h", SYS + D1 + D2 + D3)
    assert server.plan(SYS + D1 + D2 + D3 + Q) == []  # already the cached prefix
    assert server.plan(SYS2 + D3 + D1 + D2 + Q) == []  # the stored head is missing


def test_a_zero_budget_and_another_namespace_give_nothing() -> None:
    server = Server()
    server.store("h", SYS + D1 + D2 + D3)
    assert server.plan(SYS + D3 + D1 + D2 + Q, budget_ms=0) == []
    other: Namespace = ("model", 1, "other-salt")
    assert plan(server.prompts, server.index, other, SYS + D3 + D1 + D2 + Q, [], 0, 100) == []


def test_the_namespace_resolves_with_wildcards_only_when_unique() -> None:
    server = Server()
    server.store("h", SYS + D1)
    assert server.prompts.resolve("model", 1, "") == NS
    assert server.prompts.resolve("", 0, "") == NS  # empty model, world size 0: any
    assert server.prompts.resolve("model", 1, "salt") is None  # the salt must be equal
    server.store("h2", SYS + D2, ("model", 2, ""))
    assert server.prompts.resolve("model", 0, "") is None  # two namespaces match
    assert server.prompts.resolve("model", 2, "") == ("model", 2, "")


def test_the_best_of_several_stored_prompts_wins_and_the_result_is_a_permutation() -> None:
    server = Server()
    server.store("short", SYS + D2)
    server.store("long", SYS + D1 + D2 + D3)
    query = SYS + D3 + D2 + D1 + Q
    planned = server.plan(query)
    assert sorted(planned) == sorted(query)
    assert planned == SYS + D1 + D2 + D3 + Q  # 8 cached chunks beat SYS + D2's 4


def test_a_plan_must_beat_the_prompts_own_cached_prefix() -> None:
    server = Server()
    server.store("short", SYS + D2)
    server.store("long", SYS + D1 + D2 + D3)
    # P already starts with SYS + D2 (4 cached chunks); the long prompt's D1 is mostly in
    # P's unmovable tail, so its best copy is SYS + half of D1: 3 chunks. Keep P.
    assert server.plan(SYS + D2 + D3 + Q + D1) == []


def test_the_question_tail_never_moves() -> None:
    server = Server()
    server.store("h", SYS + D1)
    # D1 only in P's last LMIN tokens: it may not be moved forward.
    query = SYS + D2 + D1[: 2 * C - LMIN] + D1[2 * C - LMIN :]
    planned = server.plan(query)
    assert planned == [] or planned[-LMIN:] == query[-LMIN:]


def test_the_store_is_bounded_by_tokens_and_drops_the_oldest_prompt() -> None:
    server = Server(max_tokens=3 * len(SYS + D1))
    for n in range(5):
        server.store(f"r{n}", doc(100 + n, 4 * C))
    status = server.prompts.status()
    assert status["prompts"] == 3 and status["evicted"] == 2
    assert status["tokens"] <= 3 * len(SYS + D1)
    prompts, owners = server.prompts.snapshot(NS)
    assert [p.request_id for p in prompts] == ["r4", "r3", "r2"]
    assert set(owners.values()) == {"r2", "r3", "r4"}  # the dropped ones own nothing
    lone = Server(max_tokens=1)
    lone.store("big", SYS + D1)
    assert lone.prompts.status()["prompts"] == 1  # at least one prompt is kept


def test_the_budget_bounds_the_planning_time() -> None:
    server = Server()
    for n in range(8):
        server.store(f"r{n}", doc(200 + n, 64 * C))
    query = doc(207, 64 * C)[::-1] + Q
    started = time.monotonic()
    server.plan(query, budget_ms=5)
    assert time.monotonic() - started < 1.0  # a few ms of planning, plus hashing the query
