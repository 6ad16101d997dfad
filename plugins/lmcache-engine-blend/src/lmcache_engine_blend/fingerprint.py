"""The fingerprint index: finds stored chunks by content, at any token offset of a prompt.

A chunk's fingerprint is upstream's position-independent polynomial hash of its
token ids, ``h = sum(tok[j] * B**(C-1-j)) mod 2**64`` with ``B`` the 64-bit golden
ratio constant and ``C`` the chunk size. Stored chunks are fingerprinted over
their non-overlapping chunks; a query is hashed at *every* offset (a rolling
window), so a document found at an unaligned position still matches.

How this differs from upstream's matcher (deliberately):

* **Namespaced** by ``(model_name, world_size, cache_salt)``: another tenant's or
  model's lookups can neither see nor strike (and so erase) an owner's entries.
* **Collision-safe**: a dict from the full 64-bit fingerprint to its entries, not a
  direct-mapped table of 2**20 slots whose occupants overwrite each other; an
  entry also keeps a second, independent digest of its tokens that a match must
  agree with, so two different texts with the same fingerprint never match.
* **Bounded**: at most ``capacity`` entries over all namespaces; registering past
  it evicts the oldest-registered entries first, and counts them.

The rolling hash is computed in closed form with numpy (no Python loop per
token): with ``W[j] = tok[j] * B**-j`` (``B`` is odd, so invertible mod 2**64) and
``S`` its prefix sums, the window at ``s`` is ``B**(s+C-1) * (S[s+C] - S[s])``.
"""

from __future__ import annotations

import hashlib
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

BASE = 0x9E3779B97F4A7C15
"""Upstream's polynomial base (the 64-bit golden-ratio constant)."""
BASE_INVERSE = pow(BASE, -1, 1 << 64)
"""``BASE**-1 mod 2**64`` (the base is odd)."""
DEFAULT_CAPACITY = 1 << 20
"""Entries kept over all namespaces (upstream's limit, but here entries are reclaimed)."""
FILTER_BITS = 21
"""A counting filter of ``2**FILTER_BITS`` buckets screens a query's offsets in one
vectorised step; only the few offsets it passes reach the dicts."""
STALE_STRIKES = 2
"""Consecutive stale lookups after which an entry is removed (upstream's threshold)."""

_FILTER_MASK = (1 << FILTER_BITS) - 1

Namespace = tuple[str, int, str]
"""``(model_name, world_size, cache_salt)``: whose chunks an entry describes."""
Tokens = npt.NDArray[np.uint64]
TokenIds = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]
"""Token ids: a prompt's are kept as the uint32 values they were decoded to (widening
them to uint64 wrote 128 KB per fresh 64-chunk prompt: 0.85-0.92x live at 64 chunks);
the fingerprints' products widen them anyway."""


@dataclass(frozen=True, slots=True)
class Match:
    """A stored chunk found in a query: its tokens ``[old_st, old_st + C)`` at ``cur_st``."""

    old_st: int
    cur_st: int
    chain_hash: bytes


def _cur_st(match: Match) -> int:
    return match.cur_st


@dataclass(slots=True)
class _Entry:
    chain_hash: bytes
    poly: int
    digest: bytes
    old_st: int
    namespace: Namespace


@dataclass
class _Space:
    """One namespace's entries."""

    by_poly: dict[int, list[_Entry]] = field(default_factory=dict)
    by_hash: dict[bytes, _Entry] = field(default_factory=dict)
    strikes: dict[bytes, int] = field(default_factory=dict)


@dataclass
class IndexStats:
    """Counters for ``/status`` and the metrics."""

    registered: int = 0
    removed_stale: int = 0
    evicted_capacity: int = 0
    collisions_rejected: int = 0


def _digest(window: bytes | memoryview) -> bytes:
    """The second, independent digest of a chunk: over its tokens as little-endian uint32."""
    return hashlib.blake2b(window, digest_size=8).digest()


def token_bytes(tokens: TokenIds) -> bytes:
    """The tokens as the little-endian uint32 bytes :func:`_digest` reads."""
    return tokens.astype("<u4", copy=False).tobytes()  # uint32 prompts: one copy, not two


MatchToken = tuple[Namespace, int, list["Match"]]
"""A prompt's memoised match: namespace, the index's generation, the matches.

Compared by identity: a new match (another generation) is a new tuple."""


class Prompt:
    """A prompt's tokens and what matching them needs, each computed once.

    A prompt seen again (the same raw bytes: a re-sent or repeated request) is
    matched again from here without decoding, re-hashing or re-digesting it
    (:class:`~lmcache_engine_blend.prompt_cache.PromptCache`).

    Args:
        tokens: The token ids.
        chunk_size: Tokens per chunk.
    """

    __slots__ = (
        "_bytes",
        "_digests",
        "_matched",
        "_plan",
        "_polys",
        "_screened",
        "_seed",
        "chunk_size",
        "tokens",
    )

    def __init__(self, tokens: TokenIds, chunk_size: int) -> None:
        self.tokens = tokens
        self.chunk_size = chunk_size
        self._bytes: memoryview | None = None
        self._polys: Tokens | None = None
        self._digests: dict[int, bytes] = {}
        self._matched: tuple[Namespace, int, list[Match]] | None = None
        """The last match: namespace, the index's generation then, the matches."""
        self._seed: tuple[Prompt, int] | None = None
        """A prompt with the same first tokens, and how many windows the two share."""
        self._screened: tuple[int, npt.NDArray[np.intp]] | None = None
        """The offsets the index's filter passed, and the index's generation then."""
        self._plan: tuple[MatchToken, object, object] | None = None
        """A caller's result derived from one match: its token, the caller's key, the value."""

    def plan(self, token: MatchToken | None, key: object) -> object | None:
        """What :meth:`keep_plan` kept for this match and ``key``; None if nothing or another.

        A caller derives something from a match alone (the unified lookup's
        winners and their keys); it is good for as long as the match is, which
        ``token`` (from :meth:`FingerprintIndex.match_with_token`) identifies:
        the same namespace, the same index generation, the same matches.
        """
        memo = self._plan
        if token is None or memo is None or memo[0] is not token or memo[1] != key:
            return None
        return memo[2]

    def keep_plan(self, token: MatchToken | None, key: object, value: object) -> None:
        """Keep ``value``, derived from the match of ``token`` and ``key`` alone."""
        if token is not None:
            self._plan = (token, key, value)

    def share_windows(self, other: Prompt, shared_tokens: int) -> None:
        """Take ``other``'s fingerprints and digests of the windows both prompts hold.

        ``other`` has the same first ``shared_tokens`` tokens (the caller has
        checked them), so a window wholly inside them, one starting before
        ``shared_tokens - chunk_size + 1``, has the same fingerprint and digest
        in both (neither depends on where the window is). Only the windows past
        them are hashed for this prompt.
        """
        cut = min(shared_tokens, len(self), len(other)) - self.chunk_size + 1
        if cut <= 0 or other.chunk_size != self.chunk_size:
            return
        self._seed = (other, cut)
        # dict() copies in one C call: another thread's insert cannot break the iteration.
        digests = dict(other._digests)
        if digests and max(digests) >= cut:  # usually none past the cut: no Python loop
            digests = {p: d for p, d in digests.items() if p < cut}
        self._digests = digests

    def __len__(self) -> int:
        return len(self.tokens)

    def polys(self, index: FingerprintIndex) -> Tokens:
        """The rolling fingerprint at every offset (see :meth:`FingerprintIndex.rolling`)."""
        if self._polys is None:
            seed = self._seed
            known = seed[0]._polys if seed is not None else None
            if seed is not None and known is not None:
                cut = seed[1]
                rest = index.rolling(self.tokens[cut:])
                self._polys = np.concatenate((known[:cut], rest))
            else:
                self._polys = index.rolling(self.tokens)
        return self._polys

    def screen(self, counts: npt.NDArray[np.uint32], generation: int) -> npt.NDArray[np.intp]:
        """The offsets whose fingerprint the index's counting filter passes (ascending).

        Gathering from the filter (8 MB) at every offset costs a cache miss per
        token; it is done once per index generation (the filter changes only
        with the entries), and a prompt sharing windows with another takes the
        other's offsets below the shared ones when both saw the same generation.
        Called with the index's lock held; :meth:`polys` first.
        """
        screened = self._screened
        if screened is not None and screened[0] == generation:
            return screened[1]
        polys = self._polys
        assert polys is not None
        seed = self._seed
        mask = np.uint64(_FILTER_MASK)
        theirs = seed[0]._screened if seed is not None else None
        if seed is not None and theirs is not None and theirs[0] == generation:
            cut = seed[1]
            head = theirs[1][: int(theirs[1].searchsorted(cut))]
            tail = counts[polys[cut:] & mask].nonzero()[0] + cut
            hits = np.concatenate((head, tail))
        else:
            hits = counts[polys & mask].nonzero()[0]
        self._screened = (generation, hits)
        return hits

    def digest(self, position: int) -> bytes:
        """The digest of the chunk-long window at ``position``."""
        digest = self._digests.get(position)
        if digest is None:
            if self._bytes is None:
                self._bytes = memoryview(token_bytes(self.tokens))
            digest = _digest(self._bytes[4 * position : 4 * (position + self.chunk_size)])
            self._digests[position] = digest
        return digest


def _power_table(base: int, size: int) -> Tokens:
    """``base**i mod 2**64`` for ``i < size`` (uint64 products wrap, which is the modulus)."""
    table = np.full(size, base, dtype=np.uint64)
    table[0] = 1
    return np.cumprod(table, dtype=np.uint64)


class _Powers:
    """``B**i`` and ``B**-i`` mod 2**64 for ``i < n``, grown on demand."""

    def __init__(self) -> None:
        self.up = _power_table(BASE, 1)
        self.down = _power_table(BASE_INVERSE, 1)

    def upto(self, n: int) -> tuple[Tokens, Tokens]:
        if len(self.up) < n:
            size = max(n, 2 * len(self.up))
            self.up = _power_table(BASE, size)
            self.down = _power_table(BASE_INVERSE, size)
        return self.up, self.down


class FingerprintIndex:
    """Stored chunks by content fingerprint, per namespace (thread-safe).

    Args:
        chunk_size: Tokens per chunk.
        capacity: Most entries kept over all namespaces.
        dedup_content: Index one entry per text and namespace (``--enable-dedup-content``):
            the same chunk behind another prefix is not indexed again.
    """

    def __init__(
        self, chunk_size: int, capacity: int = DEFAULT_CAPACITY, dedup_content: bool = False
    ) -> None:
        if chunk_size < 1 or capacity < 1:
            raise ValueError("chunk_size and capacity must be >= 1")
        self.chunk_size = chunk_size
        self.capacity = capacity
        self.dedup_content = dedup_content
        self.stats = IndexStats()
        self._spaces: dict[Namespace, _Space] = {}
        self._order: OrderedDict[tuple[Namespace, bytes], None] = OrderedDict()
        self._powers = _Powers()
        self._filter = np.zeros(1 << FILTER_BITS, dtype=np.uint32)
        self._generation = 0
        """Bumped by every change of the entries: a prompt's memoised match is good until then."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._order)

    # -- hashing ----------------------------------------------------------------------------

    def rolling(self, tokens: TokenIds) -> Tokens:
        """The fingerprint of the window at every offset ``s`` in ``[0, n - C]``."""
        size, n = self.chunk_size, len(tokens)
        if n < size:
            return np.empty(0, dtype=np.uint64)
        up, down = self._powers.upto(n)
        # Array arithmetic wraps silently (no errstate needed: only numpy scalars warn), and
        # the prefix sums are written behind a leading zero in place: four array operations
        # on a live server's path, where each costs several warm ones (docs/benchmarks.md).
        sums = np.empty(n + 1, dtype=np.uint64)
        sums[0] = 0
        np.multiply(tokens, down[:n], out=sums[1:]).cumsum(out=sums[1:])
        windows = sums[size:] - sums[: n - size + 1]
        windows *= up[size - 1 : n]
        return windows

    def chunk_polys(self, tokens: Tokens) -> Tokens:
        """The fingerprints of the non-overlapping full chunks of ``tokens``."""
        return self.rolling(tokens)[:: self.chunk_size]

    # -- registration -------------------------------------------------------------------------

    def register(
        self,
        namespace: Namespace,
        tokens: Tokens,
        chain_hashes: Sequence[bytes],
        first_chunk: int,
        position: int,
    ) -> int:
        """Index chunks ``first_chunk..`` of ``tokens`` (which start at ``position``).

        Args:
            namespace: Whose chunks these are.
            tokens: Whole chunks, ``len(chain_hashes) * C`` tokens.
            chain_hashes: The chain hash (object key hash) of each chunk.
            first_chunk: Chunks before it are not indexed (upstream's chunk-0 rule).
            position: Absolute position of ``tokens[0]`` in its prompt.

        Returns:
            How many entries were newly indexed (a chunk already indexed under its chain
            hash is kept; under ``dedup_content`` so is one whose text is).
        """
        size = self.chunk_size
        polys = self.chunk_polys(tokens)
        added = 0
        with self._lock:
            space = self._spaces.setdefault(namespace, _Space())
            seen: set[int] = set()
            for index in range(first_chunk, min(len(chain_hashes), len(polys))):
                chain = bytes(chain_hashes[index])
                poly = int(polys[index])
                if chain in space.by_hash:
                    space.strikes.pop(chain, None)
                    continue
                if self.dedup_content and (poly in seen or poly in space.by_poly):
                    continue
                seen.add(poly)
                window = token_bytes(tokens[index * size : (index + 1) * size])
                entry = _Entry(chain, poly, _digest(window), position + index * size, namespace)
                space.by_poly.setdefault(poly, []).append(entry)
                space.by_hash[chain] = entry
                self._filter[poly & _FILTER_MASK] += 1
                self._order[(namespace, chain)] = None
                added += 1
            if added:
                self._generation += 1
            self.stats.registered += added
            self._evict_over_capacity()
        return added

    def _evict_over_capacity(self) -> None:
        while len(self._order) > self.capacity:
            (namespace, chain), _ = self._order.popitem(last=False)
            self._drop(self._spaces[namespace], chain)
            self.stats.evicted_capacity += 1

    def _drop(self, space: _Space, chain: bytes) -> None:
        entry = space.by_hash.pop(chain, None)
        space.strikes.pop(chain, None)
        if entry is None:
            return
        self._generation += 1
        self._filter[entry.poly & _FILTER_MASK] -= 1
        bucket = space.by_poly.get(entry.poly, [])
        bucket[:] = [e for e in bucket if e is not entry]
        if not bucket:
            space.by_poly.pop(entry.poly, None)

    # -- matching ---------------------------------------------------------------------------

    def match(self, namespace: Namespace, tokens: TokenIds | Prompt) -> list[Match]:
        """Stored chunks of ``namespace`` found anywhere in ``tokens``, in position order.

        One match per distinct text, at its first occurrence; when several stored
        chunks share the text (behind different prefixes), the newest is reported.
        Matches may overlap each other.
        """
        return self.match_with_token(namespace, tokens)[0]

    def match_with_token(
        self, namespace: Namespace, tokens: TokenIds | Prompt
    ) -> tuple[list[Match], MatchToken | None]:
        """:meth:`match`, and a token that stands for this match (None: nothing memoised).

        The same token comes back while the prompt, the namespace and the
        index's entries stay the same (:meth:`Prompt.plan`).
        """
        size = self.chunk_size
        prompt = tokens if isinstance(tokens, Prompt) else Prompt(tokens, size)
        with self._lock:
            space = self._spaces.get(namespace)
            if space is None or not space.by_poly or len(prompt) < size:
                return [], None
            generation = self._generation
            memo = prompt._matched
            if memo is not None and memo[0] == namespace and memo[1] == generation:
                return list(memo[2]), memo  # the same prompt, the same entries: the same matches
            polys = prompt.polys(self)
            # One vectorised screen, then Python only at the offsets it passes.
            hits = prompt.screen(self._filter, generation)
            found: list[Match] = []
            reported: set[int] = set()
            by_poly = space.by_poly
            seed = prompt._seed
            theirs = seed[0]._matched if seed is not None else None
            if theirs is not None and theirs[:2] != (namespace, generation):
                theirs = None  # matched against other entries: nothing of it carries over
            if seed is not None and theirs is not None:
                # The windows before the cut are the other prompt's, matched against the same
                # entries: its matches there, and the texts it reported there, are this one's.
                cut = seed[1]
                head = int(hits.searchsorted(cut))
                # The texts indexed among them: one C-level pass over the list, not the index.
                reported = by_poly.keys() & polys[hits[:head]].tolist()
                # Matches are in position order: those before the cut are a leading slice.
                found = theirs[2][: bisect_left(theirs[2], cut, key=_cur_st)]
                hits = hits[head:]
            # Python ints once, in one call (indexing numpy scalars one by one is slower).
            for position, poly in zip(hits.tolist(), polys[hits].tolist(), strict=True):
                if poly in reported or poly not in by_poly:
                    continue
                reported.add(poly)
                digest = prompt.digest(position)
                for entry in reversed(by_poly[poly]):
                    if entry.digest == digest:
                        found.append(Match(entry.old_st, position, entry.chain_hash))
                        break
                else:
                    self.stats.collisions_rejected += 1
            prompt._seed = None
            if seed is not None and theirs is not None and theirs[2] == found:
                # The prompt it shares windows with matched the same: its token (and plans).
                prompt._matched, prompt._plan = theirs, seed[0]._plan
                return list(found), theirs
            memo = (namespace, generation, found)
            prompt._matched = memo
            return list(found), memo

    # -- evidence from lookups ----------------------------------------------------------------

    def found(self, namespace: Namespace, chains: Sequence[bytes]) -> None:
        """These entries' objects were loadable: reset their stale strikes."""
        with self._lock:
            space = self._spaces.get(namespace)
            strikes = space.strikes if space is not None else None
            if strikes:  # usually none: nothing to reset, no loop over the chains
                for chain in chains:
                    strikes.pop(chain, None)

    def stale(self, namespace: Namespace, chains: Sequence[bytes]) -> int:
        """These entries' objects exist nowhere: strike them; returns how many were removed.

        An entry is removed at :data:`STALE_STRIKES` consecutive strikes (a
        :meth:`found` in between resets the count).
        """
        removed = 0
        with self._lock:
            space = self._spaces.get(namespace)
            if space is None:
                return 0
            for chain in chains:
                if chain not in space.by_hash:
                    continue
                strikes = space.strikes.get(chain, 0) + 1
                if strikes >= STALE_STRIKES:
                    self._drop(space, chain)
                    self._order.pop((namespace, chain), None)
                    removed += 1
                else:
                    space.strikes[chain] = strikes
            self.stats.removed_stale += removed
        return removed

    def contains(self, namespace: Namespace, chain: bytes) -> bool:
        """Whether the chunk with this chain hash is indexed in ``namespace``."""
        with self._lock:
            space = self._spaces.get(namespace)
            return space is not None and chain in space.by_hash

    def status(self) -> dict[str, int]:
        """Sizes and counters for ``/status``."""
        with self._lock:
            return {
                "entries": len(self._order),
                "namespaces": len(self._spaces),
                "capacity": self.capacity,
                **vars(self.stats),
            }
