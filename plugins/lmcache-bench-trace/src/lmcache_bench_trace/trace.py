"""Mooncake-format traces, shrunk to chunks a small machine can replay.

A trace line is one request: ``timestamp`` (ms), ``input_length`` (tokens) and
``hash_ids`` (one id per 512-token block; equal ids mean equal contents *and* an
equal prefix). The replay keeps that structure and shrinks the bytes: each block
becomes ``block_tokens // chunk_size`` chunks whose tokens derive from the block
id, so equal ids give equal tokens and so equal chunk hashes on every server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per ``hash_ids`` entry in the Mooncake trace release."""

# Token ids stay below 2**31 (int32 on every engine); a block's tokens are a
# contiguous range keyed by its id, so two different ids never share a token.
_TOKEN_SPACE = 1 << 31


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace.

    Attributes:
        index: Position in the trace (0-based).
        arrival_s: Arrival time in seconds from the trace's start.
        input_length: Prompt tokens.
        hash_ids: One id per block of the prompt (the last block may be partial).
    """

    index: int
    arrival_s: float
    input_length: int
    hash_ids: tuple[int, ...]

    def tokens(self, block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> list[int]:
        """The prompt's token ids: block ``i``'s tokens derive from ``hash_ids[i]`` alone."""
        out: list[int] = []
        for position, block_id in enumerate(self.hash_ids):
            first = (block_id * block_tokens) % _TOKEN_SPACE
            take = min(block_tokens, self.input_length - position * block_tokens)
            if take <= 0:
                break
            out.extend(range(first, first + take))
        return out

    def full_chunks(self, chunk_size: int) -> int:
        """How many whole chunks of ``chunk_size`` tokens the prompt has (only those are cached)."""
        return min(self.input_length, len(self.hash_ids) * MOONCAKE_BLOCK_TOKENS) // chunk_size

    def chunk_ids(self, chunk_size: int, block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> list[int]:
        """A content id per whole chunk, equal exactly when the chunk's prefix is equal.

        The id of chunk ``j`` is ``(hash_ids[b], j - first chunk of block b)``,
        packed into one int; because a block id already names its whole prefix,
        this is what the server's chained chunk hash distinguishes.

        Raises:
            ValueError: ``block_tokens`` is not a multiple of ``chunk_size``.
        """
        if block_tokens % chunk_size:
            raise ValueError(f"block_tokens {block_tokens} is not a multiple of {chunk_size}")
        per_block = block_tokens // chunk_size
        return [
            self.hash_ids[j // per_block] * per_block + j % per_block
            for j in range(self.full_chunks(chunk_size))
        ]


def load_trace(path: Path | str, max_requests: int | None = None) -> list[TraceRequest]:
    """Read a Mooncake-format JSONL trace.

    Args:
        path: The trace file.
        max_requests: Keep only the first N requests (None: all).

    Raises:
        ValueError: A line is not a request object (the line number is named).
    """
    return list(iter_trace(path, max_requests))


def iter_trace(path: Path | str, max_requests: int | None = None) -> Iterator[TraceRequest]:
    """Like :func:`load_trace`, one request at a time."""
    with open(path, encoding="utf-8") as handle:
        count = 0
        for number, line in enumerate(handle, 1):
            if max_requests is not None and count >= max_requests:
                return
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                request = TraceRequest(
                    index=count,
                    arrival_s=float(raw["timestamp"]) / 1000.0,
                    input_length=int(raw["input_length"]),
                    hash_ids=tuple(int(h) for h in raw["hash_ids"]),
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a trace request ({exc})") from None
            if request.input_length < 0:
                raise ValueError(f"{path}:{number}: negative input_length")
            yield request
            count += 1
