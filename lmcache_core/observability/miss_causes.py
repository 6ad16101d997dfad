"""Why a chunk of a lookup was not a hit: the one list of miss causes.

The lookup service classifies every chunk of a lookup that is not part of the
hit (:mod:`lmcache_core.engine.miss_explainer`); the L2 tier reports the causes
only it can see (a load that failed, timed out or was corrupt). The values are
the ``cause`` label of ``lmcache_mp_lookup_miss_chunks_total``, the keys of
``miss_chunks_by_cause`` in ``mp.lookup_prefetch.end`` and in
``GET /lookups/{request_id}``: they are only ever added to.
"""

from __future__ import annotations

import enum


class MissCause(enum.StrEnum):
    """The cause of one missing chunk, most specific first (the order classification tries)."""

    PARTIAL_CHUNK = "partial_chunk"
    PREFIX_GAP = "prefix_gap"
    BEING_WRITTEN = "being_written"
    PREFETCH_LIMIT = "prefetch_limit"
    SUPERSEDED = "superseded"
    NO_WORKER = "no_worker"
    L2_TIMEOUT = "l2_timeout"
    L2_CORRUPT = "l2_corrupt"
    L2_LOAD_FAILED = "l2_load_failed"
    L1_FULL = "l1_full"
    EVICTED = "evicted"
    OTHER_CACHE_SALT = "other_cache_salt"
    OTHER_MODEL = "other_model"
    OTHER_WORLD_SIZE = "other_world_size"
    LOST = "lost"
    NEVER_STORED = "never_stored"


DESCRIPTIONS: dict[MissCause, str] = {
    MissCause.PARTIAL_CHUNK: "the tokens after the last full chunk: never cacheable",
    MissCause.PREFIX_GAP: "present, but an earlier chunk is missing (KV needs its whole prefix)",
    MissCause.BEING_WRITTEN: "a store is still writing it (reserved in L1, not committed)",
    MissCause.PREFETCH_LIMIT: (
        "not looked up in L2: --l2-prefetch-max-in-flight prefetches were running and the "
        "prefetch queue was full"
    ),
    MissCause.SUPERSEDED: (
        "a newer lookup or the end of the request replaced this lookup before its L2 "
        "prefetch finished (the loaded chunks were released unread)"
    ),
    MissCause.NO_WORKER: (
        "not looked up in L2: no worker of this model and world size is registered, so the "
        "object size is unknown"
    ),
    MissCause.L2_TIMEOUT: "an L2 adapter's lookup or load did not answer within the L2 timeout",
    MissCause.L2_CORRUPT: "an L2 adapter held it but the object failed its header check",
    MissCause.L2_LOAD_FAILED: "an L2 adapter held it but its lookup or load failed",
    MissCause.L1_FULL: "held in L2, but L1 had no room to load it into",
    MissCause.EVICTED: "stored under this key once, then evicted or deleted (tier, time, reason)",
    MissCause.OTHER_CACHE_SALT: "this chunk hash is stored under another cache salt",
    MissCause.OTHER_MODEL: "this chunk hash is stored under another model name",
    MissCause.OTHER_WORLD_SIZE: "this chunk hash is stored under another world size",
    MissCause.LOST: (
        "stored under this key once, gone without a recorded removal (removed outside the "
        "server, or its record was overwritten in the bounded history)"
    ),
    MissCause.NEVER_STORED: "no tier holds it and no record says it was ever stored",
}
"""One line per cause, for docs, the CLI and metric help."""
