"""Drive our blend server with upstream LMCache 0.5.6's own client (run in the compat venv).

Usage: python drive_upstream_blend.py tcp://127.0.0.1:PORT [main|reorder]

``reorder`` (a server with ``--enable-blend-reorder``) checks ``cb_reorder_plan``
against upstream's measured rows (reference §10) instead of the main checks.

Upstream's ``LMCacheMPWorkerAdapter`` (lmcache_driven, KV moved to POSIX shared
memory by the adapter) stores a prompt [SYS | D1 | D2 | D3] whose K carries real
RoPE; its ``ZmqMultiprocessClient`` (``worker.req_client``) then calls every
``cb_*`` operation, and raw DEALER frames check the encodings. The expected
values are those upstream's own server gives (the reference's lookups B-J),
except where we differ on purpose, each named in the report:

* ``errors_answered``: a bad request gets an error reply at once (upstream sends
  no reply; its client waits for its timeout);
* ``cpu_retrieve_writes``: ``cb_retrieve_pre_computed`` of a full table returns
  ``True`` on CPU and the KV is written, K re-rotated (upstream: ``False``).

Prints one JSON line (every check and its outcome); exits non-zero on any FAIL.
"""

import json
import math
import os
import random
import sys
import time

os.environ.setdefault("LMCACHE_TRACK_USAGE", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")

import msgspec
import torch
import zmq
from lmcache.integration.vllm.vllm_multi_process_adapter import (
    LMCacheMPWorkerAdapter,
    LoadStoreOp,
    ParallelStrategy,
)
from lmcache.v1.multiprocess.custom_types import (
    CBUnifiedLookupResult,
    IPCCacheServerKey,
)
from lmcache.v1.multiprocess.token_hasher import TokenHasher
from lmcache.v1.platform.devices.cpu.shm import CpuShmTensorWrapper

BLOCK = 16
LAYERS, BLOCKS, HEADS, DIM = 2, 160, 2, 64
MODEL = "blend-compat"
CHUNK = 256
TIMEOUT = 20

checks: dict[str, str] = {}


def check(name: str, ok: bool, detail: object = "") -> None:
    checks[name] = "PASS" if ok else f"FAIL {detail}"


def cos_sin(max_position: int, rot: int) -> torch.Tensor:
    inv = 1.0 / (10000.0 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float64), inv)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(torch.float32)


def rope(x: torch.Tensor, position: int, cache: torch.Tensor) -> torch.Tensor:
    """NeoX RoPE of rows ``[..., heads, DIM]`` at one position (fp64)."""
    half = DIM // 2
    cos, sin = cache[position, :half].double(), cache[position, half:].double()
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def raw_rows(tok: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(tok)
    shape = (LAYERS, HEADS, DIM)
    return (
        torch.randn(shape, generator=gen, dtype=torch.float64),
        torch.randn(shape, generator=gen, dtype=torch.float64),
    )


def key(tokens, rid, *, worker_id=None, salt="", readers=1, end=None):
    return IPCCacheServerKey(
        model_name=MODEL,
        world_size=1,
        worker_id=worker_id,
        token_ids=list(tokens),
        start=0,
        end=len(tokens) if end is None else end,
        request_id=rid,
        cache_salt=salt,
        num_kv_readers=readers,
    )


def unified(client, k, polls=500):
    for _ in range(polls):
        result = client.cb_unified_lookup(k, 1).result(timeout=TIMEOUT)
        if result is not None:
            return result
        time.sleep(0.01)
    raise SystemExit("cb_unified_lookup never answered")


def segs(result: CBUnifiedLookupResult):
    return (
        result.prefix_coverage_tokens,
        [(s.old_st, s.old_ed, s.cur_st, s.cur_ed) for s in result.non_prefix_segments],
        list(result.segmented_prefix_segments),
    )


def raw_call(url: str, op_frame: bytes, *args: bytes) -> list[bytes]:
    """One request on a raw DEALER socket: the reply frames after the uid."""
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, TIMEOUT * 1000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    try:
        sock.send_multipart([msgspec.msgpack.encode(random.randrange(1 << 30)), op_frame, *args])
        return sock.recv_multipart()[1:]
    finally:
        sock.close()


def reorder_checks(client, sys_, d1, d2, d3, q40) -> None:
    """Upstream's measured reorder rows: [SYS | D3 | D1 | D2 | q40] -> the stored order."""
    stored = sys_ + d1 + d2 + d3
    asked = sys_ + d3 + d1 + d2 + q40
    plan = list(client.cb_reorder_plan(key(asked, "req-R1"), 0, 1000).result(timeout=TIMEOUT))
    check("reorder_stored_order", plan == stored + q40, len(plan))
    plan = list(client.cb_reorder_plan(key(asked, "req-R2"), 256, 1000).result(timeout=TIMEOUT))
    check("reorder_keep_prefix_256", plan == stored + q40, len(plan))
    exact = key(stored + q40, "req-R3")
    check("reorder_exact_empty", list(client.cb_reorder_plan(exact, 0, 1000).result(TIMEOUT)) == [])
    salted = key(asked, "req-R4", salt="other")
    check(
        "reorder_other_salt_empty",
        list(client.cb_reorder_plan(salted, 0, 1000).result(TIMEOUT)) == [],
    )
    check(
        "reorder_budget_0_empty",
        list(client.cb_reorder_plan(key(asked, "req-R5"), 0, 0).result(timeout=TIMEOUT)) == [],
    )
    sys2 = [t + 1 for t in sys_]
    other_head = key(sys2 + d3 + d1 + d2 + q40, "req-R6")
    check(
        "reorder_absent_head_empty",
        list(client.cb_reorder_plan(other_head, 0, 1000).result(timeout=TIMEOUT)) == [],
    )
    result = unified(client, key(stored + q40, "req-R1"))
    check("reorder_plan_is_a_prefix_hit", result.prefix_coverage_tokens == 1024, segs(result))
    client.end_session("req-R1").result(timeout=TIMEOUT)


def finish() -> None:
    print(json.dumps(checks))
    failed = [name for name, outcome in checks.items() if outcome != "PASS"]
    if failed:
        raise SystemExit(f"FAILED: {failed}")


def main(url: str, scenario: str = "main") -> None:
    strategy = ParallelStrategy(
        mla_only=False, vllm_world_size=1, vllm_worker_id=0, tp_size=1, pp_size=1, n_servers=1
    )
    extra = {
        "lmcache.mp.mp_transfer_mode": "lmcache_driven",
        "lmcache.mp.mq_timeout": float(TIMEOUT),
        "lmcache.mp.heartbeat_interval": 5.0,
    }
    context = zmq.Context()
    worker = LMCacheMPWorkerAdapter(url, context, MODEL, BLOCK, strategy, extra_config=extra)
    client = worker.req_client

    # -- handshake ------------------------------------------------------------------------
    check(
        "handshake_v1", tuple(client.cb_protocol_handshake(1).result(timeout=TIMEOUT)) == (1, True)
    )
    check(
        "handshake_v2", tuple(client.cb_protocol_handshake(2).result(timeout=TIMEOUT)) == (1, False)
    )

    # -- register KV and rope -------------------------------------------------------------
    kv = {
        f"model.layers.{i}.attn": torch.zeros(2, BLOCKS, BLOCK, HEADS, DIM, dtype=torch.bfloat16)
        for i in range(LAYERS)
    }
    worker.register_kv_caches(kv, layout_hints={"kv_layout": "NHD"})
    layers = list(kv.values())
    instance = worker.instance_id
    cache = cos_sin(8192, DIM)
    shared = cache.clone()
    wrapper = CpuShmTensorWrapper.wrap(shared)  # the tensor must stay alive
    client.cb_register_rope(instance, [wrapper], DIM, True, [], [], []).result(timeout=TIMEOUT)
    check("rope_register_valid", True)
    scaled = (cache * 2).clone()
    scaled_wrapper = CpuShmTensorWrapper.wrap(scaled)
    client.cb_register_rope(instance, [scaled_wrapper], DIM, True, [], [], []).result(
        timeout=TIMEOUT
    )
    check("rope_register_mscale_x2", True)
    client.cb_register_rope(instance, [], DIM, True, [], [], []).result(timeout=TIMEOUT)
    check("rope_register_nope", True)
    for name, args in {
        "kv_quant_int4": ([wrapper], DIM, True, [], [], [], "int4"),
        "group_rot_0_0": ([wrapper], DIM, True, [], [[0, 0]], [], ""),
        "group_to_cache_3": ([wrapper], DIM, True, [3], [], [], ""),
    }.items():
        started = time.monotonic()
        try:
            client.cb_register_rope(instance, *args).result(timeout=TIMEOUT)
            check(f"rope_invalid_{name}", False, "accepted")
        except (ValueError, TimeoutError):  # errors_answered: upstream sends no reply
            check(f"rope_invalid_{name}", time.monotonic() - started < TIMEOUT / 2)
    client.cb_register_rope(instance, [wrapper], DIM, True, [], [], []).result(timeout=TIMEOUT)

    # -- store [SYS | D1 | D2 | D3] with K = RoPE(k_raw, position) ------------------------
    rng = random.Random(11)
    sys_, d1, d2, d3 = ([rng.randrange(1, 30000) for _ in range(CHUNK)] for _ in range(4))
    stored = sys_ + d1 + d2 + d3
    store_blocks = list(range(1, 1 + len(stored) // BLOCK))

    def write(tokens, blocks):
        for position, tok in enumerate(tokens):
            k, v = raw_rows(tok)
            b, o = blocks[position // BLOCK], position % BLOCK
            for index, layer in enumerate(layers):
                layer[0, b, o] = rope(k[index], position, cache).to(torch.bfloat16)
                layer[1, b, o] = v[index].to(torch.bfloat16)

    write(stored, store_blocks)
    op = LoadStoreOp(token_ids=stored, block_ids=[store_blocks], start=0, end=len(stored))
    worker.submit_store_request("blend-store", op, worker.create_recorded_event())
    deadline = time.monotonic() + TIMEOUT
    while "blend-store" not in (worker.get_finished({"blend-store"})[0] or set()):
        if time.monotonic() > deadline:
            raise SystemExit("the store never finished")
        time.sleep(0.01)

    q40 = [rng.randrange(1, 30000) for _ in range(40)]
    if scenario == "reorder":
        reorder_checks(client, sys_, d1, d2, d3, q40)
        worker.shutdown()
        finish()
        return

    # -- lookups (upstream's B-J) -----------------------------------------------------------
    b_tokens = sys_ + d3 + d1 + d2 + q40
    b_expected = (256, [(768, 1024, 256, 512), (256, 512, 512, 768), (512, 768, 768, 1024)], [])
    c_tokens = d2 + d1 + q40  # nothing is prefix, both found
    result_b = unified(client, key(b_tokens, "req-B"))
    check("lookup_B", segs(result_b) == b_expected, segs(result_b))
    hasher = TokenHasher(chunk_size=CHUNK)
    chain = hasher.compute_chunk_hashes(stored)
    hashes = {s.cur_st: bytes(s.hash) for s in result_b.non_prefix_segments}
    check(
        "segment_hash_is_stored_chain_hash",
        hashes.get(256) == bytes(chain[3]) and hashes.get(512) == bytes(chain[1]),
        {k: v.hex()[:16] for k, v in hashes.items()},
    )
    result_c = unified(client, key(c_tokens, "req-C"))
    check(
        "lookup_C",
        segs(result_c) == (0, [(512, 768, 0, 256), (256, 512, 256, 512)], []),
        segs(result_c),
    )
    d_tokens = q40[:37] + d1 + d2
    result_d = unified(client, key(d_tokens, "req-D"))
    check(
        "lookup_D_unaligned",
        segs(result_d) == (0, [(256, 512, 37, 293), (512, 768, 293, 549)], []),
        segs(result_d),
    )
    result_f = unified(client, key(stored, "req-F"))
    check("lookup_F_exact", segs(result_f) == (1024, [], []), segs(result_f))
    result_g = unified(client, key(sys_ + d1 + q40[:0] + [7] * 256 + d3, "req-G"))
    check("lookup_G", segs(result_g) == (512, [(768, 1024, 768, 1024)], []), segs(result_g))
    result_h = unified(client, key(q40[:16] + [9] * 240 + sys_, "req-H"))
    check("lookup_H_chunk0_never_fingerprinted", segs(result_h) == (0, [], []), segs(result_h))
    result_i = unified(client, key(sys_ + d1, "req-I", salt="other"))
    check("lookup_I_other_salt", segs(result_i) == (0, [], []), segs(result_i))

    # -- retrieve gates and the CPU write ---------------------------------------------------
    segments = result_b.non_prefix_segments
    q_tokens = b_tokens
    dst = list(range(80, 80 + math.ceil(len(q_tokens) / BLOCK)))
    wk = key(q_tokens, "req-B", worker_id=0)
    beyond = client.cb_retrieve_pre_computed(wk, segments, [dst[:16]], instance, b"").result(
        timeout=TIMEOUT
    )
    check("retrieve_beyond_true", bool(beyond[1]) is True, beyond)
    straddle = client.cb_retrieve_pre_computed(wk, segments, [dst[:20]], instance, b"").result(
        timeout=TIMEOUT
    )
    check("retrieve_straddle_false", bool(straddle[1]) is False, straddle)
    empty = client.cb_retrieve_pre_computed(wk, [], [dst], instance, b"").result(timeout=TIMEOUT)
    check("retrieve_empty_true", bool(empty[1]) is True, empty)
    for layer in layers:
        layer[:, dst] = 0
    full = client.cb_retrieve_pre_computed(wk, segments, [dst], instance, b"").result(
        timeout=TIMEOUT
    )
    check("cpu_retrieve_writes", bool(full[1]) is True, full)  # upstream: False on CPU
    worst_k, v_equal = 0.0, True
    for position in range(256, 1024):
        tok = q_tokens[position]
        k_raw, v_raw = raw_rows(tok)
        b, o = dst[position // BLOCK], position % BLOCK
        for index, layer in enumerate(layers):
            want = rope(k_raw[index], position, cache)
            worst_k = max(worst_k, float((layer[0, b, o].double() - want).abs().max()))
            v_equal = v_equal and torch.equal(layer[1, b, o], v_raw[index].to(torch.bfloat16))
    check("cpu_retrieve_k_rerotated", worst_k < 0.1, worst_k)
    check("cpu_retrieve_v_identical", v_equal)
    untouched = all(not bool(layer[:, dst[:16]].any()) for layer in layers)
    check("cpu_retrieve_prefix_untouched", untouched)
    again = client.cb_retrieve_pre_computed(wk, segments, [dst], instance, b"").result(
        timeout=TIMEOUT
    )
    check("retrieve_already_applied_true", bool(again[1]) is True, again)
    for rid in ("req-B", "req-C", "req-D", "req-F", "req-G", "req-H", "req-I"):
        client.end_session(rid).result(timeout=TIMEOUT)

    # -- misc ----------------------------------------------------------------------------------
    check(
        "unregister_unknown_nil", client.cb_unregister_rope(424242).result(timeout=TIMEOUT) is None
    )
    plan = client.cb_reorder_plan(key(q_tokens, "req-R"), 0, 100).result(timeout=TIMEOUT)
    check("reorder_off_empty", list(plan) == [], plan)

    # -- wire -----------------------------------------------------------------------------------
    reply = raw_call(url, msgspec.msgpack.encode(33), msgspec.msgpack.encode(1))
    check("wire_handshake_by_id", reply == [b"\x21", b"\x92\x01\xc3"], reply)
    reply = raw_call(
        url, msgspec.msgpack.encode("cb_protocol_handshake"), msgspec.msgpack.encode(2)
    )
    check("wire_handshake_by_name", reply[1:] == [b"\x92\x01\xc2"], reply)
    k = msgspec.msgpack.encode(key(q_tokens, "req-W"))
    reply = raw_call(url, msgspec.msgpack.encode(28), k, msgspec.msgpack.encode(1))
    ok = len(reply) == 2 and reply[0] == b"\x1c"
    if ok:
        decoded = msgspec.msgpack.decode(reply[1])
        ok = list(decoded) == [
            "prefix_coverage_tokens",
            "non_prefix_segments",
            "segmented_prefix_segments",
        ]
        first = decoded["non_prefix_segments"][0] if decoded["non_prefix_segments"] else {}
        ok = ok and list(first) == ["old_st", "old_ed", "cur_st", "cur_ed", "hash"]
        ok = ok and isinstance(first.get("hash"), bytes) and len(first["hash"]) == 32
    check("wire_unified_lookup_result_map", ok, reply[:1])
    client.end_session("req-W").result(timeout=TIMEOUT)
    bad = msgspec.msgpack.encode(key(q_tokens, "req-X", readers=0))
    reply = raw_call(url, msgspec.msgpack.encode(28), bad, msgspec.msgpack.encode(1))
    check(
        "wire_num_kv_readers_0_answered_with_error",
        msgspec.msgpack.decode(reply[0]) == "__error__",
        reply,
    )
    reply = raw_call(url, msgspec.msgpack.encode(25), msgspec.msgpack.encode(instance))
    check(
        "wire_wrong_arg_count_answered_with_error",
        msgspec.msgpack.decode(reply[0]) == "__error__",
        reply,
    )

    worker.shutdown()
    finish()


if __name__ == "__main__":
    main(*sys.argv[1:3])
