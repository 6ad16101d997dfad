"""Object keys as the admin API spells them, request bodies, and paginated listings.

A listing is ordered by (adapter, model, salt, KV rank, object group, chunk hash),
and its page token is the last key of the page (opaque: base64 of JSON), so a
page continues after that key even when objects come and go in between: no
object is listed twice, and none present throughout is skipped.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lmcache_core.storage.keys import ObjectKey, validate_cache_salt

MAX_PAGE_SIZE = 5000
"""Largest ``page_size`` of ``GET /cache/objects``."""

MAX_KEYS_PER_REQUEST = 10_000
"""Most keys one ``DELETE /cache/objects`` may name."""

MAX_CHUNK_HASH_BYTES = 64
MAX_MODEL_NAME_CHARS = 512
MAX_KV_RANK = (1 << 32) - 1

Tier = Literal["l1", "l2", "all"]


class KeyBody(BaseModel):
    """One object key in a request."""

    model_config = ConfigDict(extra="forbid", strict=True)

    chunk_hash_hex: str = Field(
        min_length=2, max_length=2 * MAX_CHUNK_HASH_BYTES, pattern=r"^([0-9a-fA-F]{2})+$"
    )
    model_name: str = Field(min_length=1, max_length=MAX_MODEL_NAME_CHARS)
    kv_rank: int = Field(ge=0, le=MAX_KV_RANK)
    object_group_id: int = Field(default=0, ge=0, le=MAX_KV_RANK)
    cache_salt: str = ""

    @field_validator("model_name")
    @classmethod
    def _no_at(cls, value: str) -> str:
        if "@" in value:
            raise ValueError("model_name may not contain '@'")
        return value

    @field_validator("cache_salt")
    @classmethod
    def _valid_salt(cls, value: str) -> str:
        return validate_cache_salt(value)

    def object_key(self) -> ObjectKey:
        """The storage key."""
        return ObjectKey(
            bytes.fromhex(self.chunk_hash_hex),
            self.model_name,
            self.kv_rank,
            self.object_group_id,
            self.cache_salt,
        )


class ClearBody(BaseModel):
    """``POST /cache/clear``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tier: Tier = "l1"
    force: bool = False


class DeleteBody(BaseModel):
    """``DELETE /cache/objects``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    keys: list[KeyBody] = Field(min_length=1, max_length=MAX_KEYS_PER_REQUEST)
    tier: Tier = "l2"
    force: bool = False
    adapter: int | str | None = None


M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused as soon as it is known to exceed ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before anything is
    read; the stream is counted as it arrives, so an undeclared or understated
    length is never buffered past the limit either.

    Raises:
        HTTPException: 413 for a body larger than ``limit`` bytes.
    """
    too_large = HTTPException(413, f"the request body is larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def json_object(raw: bytes, *, shape: str = "") -> dict[str, Any]:
    """A request body decoded as a JSON object.

    Args:
        raw: The body.
        shape: What the object should look like, appended to the refusal of a non-object.

    Raises:
        HTTPException: 400 for bad JSON (an empty body included) or another JSON value.
    """
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        hint = f": {shape}" if shape else ""
        raise HTTPException(400, f"the request body must be a JSON object{hint}")
    return data


def parse_body(model: type[M], raw: bytes, *, empty_ok: bool) -> M:
    """Validate a JSON request body; every problem becomes one 400 that names its field.

    Raises:
        HTTPException: 400 for bad JSON or a value the model refuses.
    """
    if not raw.strip():
        if empty_ok:
            return model()
        raise HTTPException(400, "a JSON request body is required")
    data = json_object(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:10]:
            where = ".".join(str(part) for part in error["loc"]) or "body"
            problems.append(f"{where}: {error['msg']}")
        more = exc.error_count() - len(problems)
        suffix = f" (and {more} more)" if more > 0 else ""
        raise HTTPException(400, "; ".join(problems) + suffix) from None


def key_document(key: ObjectKey) -> dict[str, Any]:
    """A key as the API spells it."""
    return {
        "chunk_hash_hex": key.chunk_hash.hex(),
        "model_name": key.model_name,
        "kv_rank": key.kv_rank,
        "object_group_id": key.object_group_id,
        "cache_salt": key.cache_salt,
    }


SortKey = tuple[int, str, str, int, int, bytes]


def sort_key(adapter: int, key: ObjectKey) -> SortKey:
    """The listing order."""
    return (
        adapter,
        key.model_name,
        key.cache_salt,
        key.kv_rank,
        key.object_group_id,
        key.chunk_hash,
    )


def encode_token(tier: str, last: SortKey) -> str:
    """The opaque page token that continues after ``last``."""
    adapter, model, salt, rank, group, chunk = last
    data = json.dumps([tier, adapter, model, salt, rank, group, chunk.hex()])
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def decode_token(tier: str, token: str) -> SortKey:
    """The key a page token continues after.

    Raises:
        HTTPException: 400 for a token this server did not issue for this tier.
    """
    try:
        padded = token + "=" * (-len(token) % 4)
        items = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        owner, adapter, model, salt, rank, group, chunk = items
        last: SortKey = (
            int(adapter),
            str(model),
            str(salt),
            int(rank),
            int(group),
            bytes.fromhex(chunk),
        )
    except (ValueError, TypeError, binascii.Error, UnicodeEncodeError):
        raise HTTPException(400, "invalid page_token") from None
    if owner != tier:
        raise HTTPException(400, f"page_token belongs to a listing of tier {owner!r}")
    return last


@dataclass(frozen=True)
class Listing:
    """One page of objects."""

    objects: list[dict[str, Any]]
    matched: int
    next_page_token: str | None


def list_page(
    tier: str,
    sources: Iterable[tuple[int, str | None, Iterable[ObjectKey]]],
    *,
    model_name: str | None,
    cache_salt: str | None,
    page_size: int,
    after: SortKey | None,
) -> Listing:
    """One page of the keys of ``sources`` ((adapter index or 0, adapter type, keys)).

    Selects the ``page_size`` smallest keys after ``after`` with a bounded heap,
    so a page costs O(n log page_size), never a full sort.
    """

    def matching() -> Iterator[tuple[SortKey, str | None]]:
        for index, kind, keys in sources:
            for key in keys:
                if model_name is not None and key.model_name != model_name:
                    continue
                if cache_salt is not None and key.cache_salt != cache_salt:
                    continue
                yield sort_key(index, key), kind

    matched = 0
    candidates = []
    for item in matching():
        matched += 1
        if after is None or item[0] > after:
            candidates.append(item)
    page = heapq.nsmallest(page_size + 1, candidates, key=lambda item: item[0])
    more = len(page) > page_size
    page = page[:page_size]
    objects = []
    for (adapter, model, salt, rank, group, chunk), kind in page:
        document = key_document(ObjectKey(chunk, model, rank, group, salt))
        if kind is not None:
            document.update(adapter=adapter, adapter_type=kind)
        objects.append(document)
    token = encode_token(tier, page[-1][0]) if more and page else None
    return Listing(objects, matched, token)
