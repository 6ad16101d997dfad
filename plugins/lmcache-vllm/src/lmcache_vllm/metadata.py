"""What the scheduler tells the workers each step: plain msgspec structs.

vLLM carries the connector metadata from the scheduler to the workers itself (the shim
wraps :class:`StepPlan` in a ``KVConnectorMetadata``); the harness sends it between its
processes as msgpack (:func:`encode_plan` / :func:`decode_plan`), never pickle.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec


class OpKind(StrEnum):
    """A transfer's direction."""

    LOAD = "load"
    STORE = "store"


class TransferOp(msgspec.Struct, frozen=True):
    """One request's load or store of the token window ``[start, end)``.

    Attributes:
        kind: Load or store.
        request_id: vLLM's request id (also the server's session id).
        token_ids: The request's tokens up to at least ``end`` (the server hashes them).
        start: First token of the window; a multiple of the chunk size.
        end: End of the window; a multiple of the chunk size.
        block_ids: The request's KV block ids per KV cache group, from token 0.
        skip_first_n_tokens: Tokens at the window's start the engine already holds
            (prefix cache hits): a load does not overwrite them.
        cache_salt: The request's cache salt ("" for none).
        request_configs: The request's ``lmcache.*`` options, sent with the key.
    """

    kind: OpKind
    request_id: str
    token_ids: list[int]
    start: int
    end: int
    block_ids: list[list[int]]
    skip_first_n_tokens: int = 0
    cache_salt: str = ""
    request_configs: dict[str, Any] | None = None


class StepPlan(msgspec.Struct):
    """The transfers of one scheduling step, loads first.

    Attributes:
        ops: Loads, then stores.
        preempted: Requests preempted this step (their blocks are being freed).
    """

    ops: list[TransferOp] = msgspec.field(default_factory=list)
    preempted: list[str] = msgspec.field(default_factory=list)

    @property
    def loads(self) -> list[TransferOp]:
        """The load ops."""
        return [op for op in self.ops if op.kind is OpKind.LOAD]

    @property
    def stores(self) -> list[TransferOp]:
        """The store ops."""
        return [op for op in self.ops if op.kind is OpKind.STORE]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(StepPlan)


def encode_plan(plan: StepPlan) -> bytes:
    """Msgpack bytes of a plan."""
    return _encoder.encode(plan)


def decode_plan(data: bytes) -> StepPlan:
    """The plan of :func:`encode_plan`'s bytes."""
    return _decoder.decode(data)
