"""Which lookup key a connection sends: chunk hashes when the server allows, else tokens.

A 64-chunk lookup carries 64 KB of token ids; :class:`~lmcache_core.protocol.types.HashLookupKey`
carries their 64 chunk hashes instead (2 KB), computed here with the core's
hashers, the same chain the server computes. A server offers it in its
``get_experimental`` reply (:mod:`lmcache_core.protocol.hash_lookup`); this
object remembers, per connection, whether it does, and stops using it after a
refusal (an engine that needs tokens, another seed), so a lookup is never
lost: the caller then sends the token form. It does no I/O itself, so the sync
client and the vLLM connector's RPC thread share it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import msgspec

from lmcache_core.hashing import ChunkHasher, chunk_hashes, make_hasher, seed_identity
from lmcache_core.protocol.errors import BadRequestError, RemoteError
from lmcache_core.protocol.hash_lookup import parse_hash_lookup_capability
from lmcache_core.protocol.types import CacheKey, HashLookupKey

_tokens_decoder = msgspec.msgpack.Decoder(list[int])

REFUSAL_MARK = "send the tokens"
"""In a ``lookup_hashes`` bad_request that no hash key to this server can avoid."""


class HashLookupForm:
    """One connection's choice between the hash and the token lookup key.

    ``known`` is False until :meth:`learn` read the server's capabilities;
    after that :meth:`key_for` gives the hash key to send, or None for the
    token form.
    """

    def __init__(self) -> None:
        self.known = False
        self.refusal: str | None = None
        """Why this connection sends tokens (None while it may send hashes)."""
        self._hasher: ChunkHasher | None = None
        self._seed: str | None = None
        self._chunk_size = 0
        self._lock = threading.Lock()

    def learn(self, experimental: Iterable[object] | None) -> None:
        """Read a ``get_experimental`` reply (None: the call failed; tokens then)."""
        with self._lock:
            self.known = True
            offer = parse_hash_lookup_capability(experimental or ())
            if offer is None:
                self.refusal = "the server does not offer lookup_hashes"
                return
            algorithm, chunk_size = offer
            try:
                hasher = make_hasher(algorithm)
            except ValueError:
                self.refusal = f"this client has no {algorithm!r} hasher"
                return
            seed = seed_identity(hasher)
            if seed is None:
                self.refusal = f"{algorithm} hashes are random here (PYTHONHASHSEED unset)"
                return
            self._hasher, self._seed, self._chunk_size = hasher, seed, chunk_size

    @property
    def enabled(self) -> bool:
        """Whether hash keys are sent (capabilities read, no refusal)."""
        return self.known and self.refusal is None and self._hasher is not None

    def key_for(self, key: CacheKey) -> HashLookupKey | None:
        """The hash form of lookup ``key``, or None: send ``key`` itself.

        None too when the tokens cannot be hashed here (too few, bad values):
        the token form then gets the server's own error for them.
        """
        hasher = self._hasher
        if not self.enabled or hasher is None:
            return None
        tokens = key.token_ids
        if isinstance(tokens, msgspec.Raw):
            try:
                tokens = _tokens_decoder.decode(tokens)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return None
        wanted = key.end // self._chunk_size
        if key.end > len(tokens) or key.start < 0 or key.start > key.end:
            return None
        try:
            hashes = chunk_hashes(hasher, tokens, self._chunk_size, num_chunks=wanted)
        except ValueError:
            return None
        return HashLookupKey(
            model_name=key.model_name,
            world_size=key.world_size,
            worker_id=key.worker_id,
            chunk_hashes=hashes,
            start=key.start,
            end=key.end,
            request_id=key.request_id,
            hash_algorithm=hasher.name,
            hash_seed=self._seed,
            cache_salt=key.cache_salt,
            request_configs=key.request_configs,
            num_kv_readers=key.num_kv_readers,
        )

    def refused(self, exc: RemoteError) -> None:
        """A ``lookup_hashes`` failed with ``exc``: the caller sends the token form now.

        Remembered (no more hash keys on this connection) unless it was a
        bad_request about this one key (its fields), which the token form
        will report again.
        """
        if isinstance(exc, BadRequestError) and REFUSAL_MARK not in str(exc):
            return
        with self._lock:
            self.refusal = str(exc)
