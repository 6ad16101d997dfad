"""``--enable-blend-reorder``: propose a prompt order that starts with a cached prompt.

RAG and agent prompts repeat the same documents in another order. When the
request's prompt ``P`` holds the pieces of a stored prompt ``H`` (its system
prompt and documents), serving ``P`` reordered so that it starts with a copy of
``H``'s beginning turns blended reuse into a plain prefix hit. The server only
proposes the order (``cb_reorder_plan``); the scheduler decides to use it.

**Recording** (:class:`PromptStore`): every blend store that committed a chunk
records, per namespace ``(model, world size, salt)`` and request id, the
prompt's tokens (from the request's first store) and the chain hashes of its
committed chunks; the newest prompt holding a chain hash owns it. The store is
an LRU bounded by total tokens (``2**24``), keeping at least one prompt.

**Planning** (:func:`plan`), for the query ``P``:

* the namespace is the key's; an empty model name or a world size of 0 matches
  any, the salt must be equal, and zero or several matching namespaces give
  ``[]``;
* candidates ``H``: the ``TOP_K`` recorded prompts owning most of ``P``'s
  fingerprint matches (ties: newest first), the owner of ``P``'s own cached
  prefix chain, and the namespace's newest prompt; each must share ``P``'s
  first ``keep_prefix`` tokens;
* for each, the longest beginning of ``H`` rebuilt from ``P``'s tokens, each
  token of ``P`` used once: pieces are runs of at least ``LMIN`` tokens that
  ``P`` and ``H`` share (found by ``LMIN``-token windows, extended token by
  token); between two pieces up to ``GLUE`` single tokens may be taken from
  anywhere in ``P``; the first ``keep_prefix`` tokens stay in place and ``P``'s
  last ``LMIN`` tokens are never moved (the question stays last);
* score ``(whole cached chunks of H copied, tokens copied, -pieces)``; the best
  plan must copy more whole chunks than ``P``'s own cached prefix already has,
  else ``P`` is kept;
* the answer is the copy, then the rest of ``P`` in its order: a permutation of
  ``P``, or ``[]`` when nothing beats keeping it (or the plan is ``P`` itself).

The budget is ``budget_ms`` of wall time: past it, the best plan finished so far
counts (``budget_ms == 0``: ``[]``). Upstream's planner is the model; this one
is our own.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from lmcache_engine_blend.fingerprint import FingerprintIndex, Namespace

MAX_TOKENS = 1 << 24
"""Tokens of recorded prompts kept, at most (the oldest prompts go first)."""
TOP_K = 4
"""Recorded prompts tried for their fingerprint hits."""
LMIN = 16
"""Shortest piece of ``P`` moved as one run, and the tail that never moves."""
GLUE = 3
"""Single tokens that may join two pieces."""


@dataclass
class Prompt:
    """One recorded prompt: its tokens and how many leading chunks are cached."""

    request_id: str
    tokens: npt.NDArray[np.uint32]
    hashes: list[bytes]
    """Chain hashes of the leading committed chunks, by chunk index."""
    leading: int = 0
    """Leading chunks committed (a prefix hit of a copy of this prompt)."""


@dataclass
class _Space:
    prompts: OrderedDict[str, Prompt] = field(default_factory=OrderedDict)
    owners: dict[bytes, str] = field(default_factory=dict)


class PromptStore:
    """The recorded prompts of every namespace, LRU-bounded by total tokens.

    Args:
        chunk_size: Tokens per chunk.
        max_tokens: Total tokens kept, at most (at least one prompt is kept).
    """

    def __init__(self, chunk_size: int, max_tokens: int = MAX_TOKENS) -> None:
        self.chunk_size = chunk_size
        self.max_tokens = max_tokens
        self._spaces: dict[Namespace, _Space] = {}
        self._order: OrderedDict[tuple[Namespace, str], int] = OrderedDict()
        self._tokens = 0
        self._lock = threading.Lock()
        self.evicted = 0

    def record(
        self,
        namespace: Namespace,
        request_id: str,
        tokens: npt.NDArray[np.uint64],
        committed: dict[int, bytes],
    ) -> None:
        """A store committed chunks ``committed`` (chunk index -> chain hash) of a prompt.

        The tokens are the request's first store's; later stores add chunks.
        """
        if not committed:
            return
        with self._lock:
            space = self._spaces.setdefault(namespace, _Space())
            prompt = space.prompts.get(request_id)
            if prompt is None:
                prompt = Prompt(request_id, tokens.astype(np.uint32), [])
                space.prompts[request_id] = prompt
                self._order[(namespace, request_id)] = len(tokens)
                self._tokens += len(tokens)
            space.prompts.move_to_end(request_id)
            self._order.move_to_end((namespace, request_id))
            chunks = dict(enumerate(prompt.hashes)) | committed
            leading = 0
            while leading in chunks:
                leading += 1
            prompt.hashes = [chunks[i] for i in range(leading)]
            prompt.leading = leading
            for chain_hash in committed.values():
                space.owners[chain_hash] = request_id
            while self._tokens > self.max_tokens and len(self._order) > 1:
                self._evict_oldest()

    def _evict_oldest(self) -> None:
        (namespace, request_id), count = self._order.popitem(last=False)
        self._tokens -= count
        self.evicted += 1
        space = self._spaces[namespace]
        space.prompts.pop(request_id, None)
        for chain_hash in [h for h, owner in space.owners.items() if owner == request_id]:
            del space.owners[chain_hash]
        if not space.prompts:
            del self._spaces[namespace]

    def resolve(self, model: str, world_size: int, salt: str) -> Namespace | None:
        """The one recorded namespace a key names (empty model / world size 0: any)."""
        with self._lock:
            found = [
                ns
                for ns in self._spaces
                if ns[2] == salt
                and (not model or ns[0] == model)
                and (world_size == 0 or ns[1] == world_size)
            ]
        return found[0] if len(found) == 1 else None

    def snapshot(self, namespace: Namespace) -> tuple[list[Prompt], dict[bytes, str]]:
        """The namespace's prompts (newest first) and its owner map, copied."""
        with self._lock:
            space = self._spaces.get(namespace)
            if space is None:
                return [], {}
            return list(reversed(space.prompts.values())), dict(space.owners)

    def status(self) -> dict[str, int]:
        """Sizes for ``/status``."""
        with self._lock:
            return {
                "prompts": len(self._order),
                "tokens": self._tokens,
                "namespaces": len(self._spaces),
                "evicted": self.evicted,
            }


@dataclass(frozen=True)
class Plan:
    """A reordering of ``P``: which of its positions come first, and what it is worth."""

    order: list[int]
    """``P``'s positions of the copy of ``H``'s beginning, in ``H``'s order."""
    chunks: int
    pieces: int

    def score(self) -> tuple[int, int, int]:
        """Whole cached chunks copied, tokens copied, fewer pieces."""
        return (self.chunks, len(self.order), -self.pieces)


def plan(
    store: PromptStore,
    index: FingerprintIndex,
    namespace: Namespace,
    tokens: Sequence[int],
    own: list[bytes],
    keep_prefix: int,
    budget_ms: int,
) -> list[int]:
    """The reordered prompt, or ``[]`` to keep it (see the module).

    Args:
        store: The recorded prompts.
        index: The fingerprint index (``P``'s matches pick candidates).
        namespace: The resolved namespace of the request.
        tokens: ``P``.
        own: The chain hashes of ``P``'s complete chunks.
        keep_prefix: Leading tokens of ``P`` that stay in place.
        budget_ms: Wall time the planner may take.
    """
    if budget_ms <= 0:
        return []
    deadline = time.monotonic() + budget_ms / 1000.0
    prompts, owners = store.snapshot(namespace)
    n = len(tokens)
    if not prompts or n - LMIN <= keep_prefix:
        return []
    query = np.asarray(tokens, dtype=np.uint64)
    size = store.chunk_size
    baseline = 0
    while baseline < len(own) and own[baseline] in owners:
        baseline += 1
    best: Plan | None = None
    pieces = _Pieces(np.asarray(tokens, dtype=np.uint32), keep_prefix)
    for prompt in _candidates(prompts, owners, index, namespace, query, own, baseline):
        if time.monotonic() >= deadline:
            break
        if len(prompt.tokens) < keep_prefix or not np.array_equal(
            prompt.tokens[:keep_prefix], pieces.tokens[:keep_prefix]
        ):
            continue
        found = pieces.rebuild(prompt, size, deadline)
        if found is not None and (best is None or found.score() > best.score()):
            best = found
    if best is None or best.chunks <= baseline:
        return []
    used = set(best.order)
    order = best.order + [i for i in range(n) if i not in used]
    if order == list(range(n)):
        return []
    return [int(tokens[i]) for i in order]


def _candidates(
    prompts: list[Prompt],
    owners: dict[bytes, str],
    index: FingerprintIndex,
    namespace: Namespace,
    query: npt.NDArray[np.uint64],
    own: list[bytes],
    baseline: int,
) -> list[Prompt]:
    """The prompts to try, newest first, each once."""
    by_id = {p.request_id: p for p in prompts}
    newest = {p.request_id: rank for rank, p in enumerate(prompts)}  # 0 = newest
    hits: dict[str, int] = {}
    for match in index.match(namespace, query):
        owner = owners.get(match.chain_hash)
        if owner in by_id:
            hits[owner] = hits.get(owner, 0) + 1
    chosen = sorted(hits, key=lambda rid: (-hits[rid], newest[rid]))[:TOP_K]
    if baseline:
        chosen.append(owners[own[baseline - 1]])
    chosen.append(prompts[0].request_id)
    unique = sorted({rid for rid in chosen if rid in by_id}, key=lambda rid: newest[rid])
    return [by_id[rid] for rid in unique]


class _Pieces:
    """``P``'s ``LMIN``-token windows, to rebuild a prompt's beginning from ``P``."""

    def __init__(self, tokens: npt.NDArray[np.uint32], keep: int) -> None:
        self.tokens = tokens
        self.keep = keep
        self.movable = len(tokens) - LMIN  # positions [keep, movable) may move
        raw = tokens.tobytes()
        width = 4 * LMIN
        self.windows: dict[bytes, list[int]] = {}
        for j in range(keep, self.movable - LMIN + 1):
            self.windows.setdefault(raw[4 * j : 4 * j + width], []).append(j)
        self.where: dict[int, list[int]] = {}
        for j in range(keep, self.movable):
            self.where.setdefault(int(tokens[j]), []).append(j)

    def rebuild(self, prompt: Prompt, size: int, deadline: float) -> Plan | None:
        """The longest beginning of ``prompt`` made of ``P``'s tokens; None past the deadline."""
        target = prompt.tokens
        raw = target.tobytes()
        order = list(range(self.keep))
        used = [False] * len(self.tokens)
        for i in order:
            used[i] = True
        pos, pieces = self.keep, 0
        while pos < len(target):
            if time.monotonic() >= deadline:
                return None
            glue = 0
            start, length = self._piece(raw, target, pos, used)
            while length == 0 and glue < GLUE and pos + glue + 1 < len(target):
                glue += 1
                start, length = self._piece(raw, target, pos + glue, used)
            if length == 0:
                break
            glued = self._glue(target[pos : pos + glue], used, range(start, start + length))
            if glued is None:
                break
            for j in glued + list(range(start, start + length)):
                used[j] = True
                order.append(j)
            pos += glue + length
            pieces += 1
        chunks = min(len(order) // size, prompt.leading)
        return Plan(order, chunks, pieces)

    def _piece(
        self, raw: bytes, target: npt.NDArray[np.uint32], pos: int, used: list[bool]
    ) -> tuple[int, int]:
        """The longest unused run of ``P`` equal to ``target[pos:]`` (``LMIN`` at least)."""
        best_start, best_length = 0, 0
        for start in self.windows.get(raw[4 * pos : 4 * pos + 4 * LMIN], ()):
            length = 0
            while (
                start + length < self.movable
                and pos + length < len(target)
                and not used[start + length]
                and self.tokens[start + length] == target[pos + length]
            ):
                length += 1
            if length >= LMIN and length > best_length:
                best_start, best_length = start, length
        return best_start, best_length

    def _glue(
        self, glue: npt.NDArray[np.uint32], used: list[bool], piece: range
    ) -> list[int] | None:
        """Unused movable positions of ``P`` (outside ``piece``) holding the glue tokens."""
        taken: list[int] = []
        for token in glue.tolist():
            spot = next(
                (
                    j
                    for j in self.where.get(int(token), ())
                    if not used[j] and j not in taken and j not in piece
                ),
                None,
            )
            if spot is None:
                return None
            taken.append(spot)
        return taken
