"""What both transfer modes share, built once by the engine and handed to each."""

from __future__ import annotations

from dataclasses import dataclass

from lmcache_core.engine.chunk_keys import ChunkKeys
from lmcache_core.engine.liveness import Liveness
from lmcache_core.engine.lookup import LookupService
from lmcache_core.storage.l1 import L1Manager
from lmcache_engine_default.store_completion import StoreCompletion
from lmcache_engine_default.workers import WorkerTable


@dataclass(frozen=True)
class TransferParts:
    """The collaborators of both ``lmcache_driven`` and ``engine_driven`` transfers.

    Attributes:
        l1: The L1 tier.
        workers: Registered workers (one table for both modes).
        liveness: Worker liveness.
        chunk_keys: Hashes and object keys of requests.
        lookups: The lookup service (sessions, and the locks retrieves consume).
        completion: What follows a commit to L1.
    """

    l1: L1Manager
    workers: WorkerTable
    liveness: Liveness
    chunk_keys: ChunkKeys
    lookups: LookupService
    completion: StoreCompletion


class WorkerTransfers:
    """Base of the two transfer collaborators: the shared parts as attributes.

    Args:
        parts: What both modes share.
    """

    def __init__(self, parts: TransferParts) -> None:
        self.l1 = parts.l1
        self.workers = parts.workers
        self.liveness = parts.liveness
        self.chunk_keys = parts.chunk_keys
        self.chunk_size = parts.chunk_keys.chunk_size
        self.lookups = parts.lookups
        self.completion = parts.completion
