"""Admin endpoints: the configuration, the live tiers, clearing, listing and deleting objects.

Reads are GET; everything that changes the cache is POST or DELETE. Bodies are
validated field by field and every refusal is a 4xx whose ``detail`` says what
was wrong. Removal never touches objects a reader holds unless ``force`` is
given, and the answers say what was kept and why.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool

from lmcache_core.config.base import mask_secrets
from lmcache_core.http.cache_objects import (
    MAX_PAGE_SIZE,
    ClearBody,
    DeleteBody,
    decode_token,
    key_document,
    list_page,
    parse_body,
    read_body,
)
from lmcache_core.state import ServerContext
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.l2.adapter import L2AdapterV1

if TYPE_CHECKING:
    from lmcache_core.server.data_path import DataPath

router = APIRouter()

MAX_JSON_BODY_BYTES = 4 << 20
"""Largest JSON body (a delete of MAX_KEYS_PER_REQUEST keys fits)."""


def _context(request: Request) -> ServerContext:
    context: ServerContext = request.app.state.context
    return context


def _data_path(request: Request) -> DataPath:
    data_path = _context(request).data_path
    if data_path is None:
        raise HTTPException(503, "this server has no data path: there is no cache to manage")
    return data_path


def _l2_adapters(data_path: DataPath) -> list[L2AdapterV1]:
    return data_path.l2.adapters if data_path.l2 is not None else []


def _select_adapters(
    adapters: list[L2AdapterV1], wanted: int | str | None
) -> list[tuple[int, L2AdapterV1]]:
    """``(index, adapter)`` pairs, numbered like ``--l2-adapter #N`` (from 1).

    Raises:
        HTTPException: 400 for an unknown index or type name, or an ambiguous name.
    """
    numbered = list(enumerate(adapters, start=1))
    if wanted is None:
        return numbered
    text = str(wanted).strip()
    if text.isdigit():
        index = int(text)
        if not 1 <= index <= len(adapters):
            raise HTTPException(
                400,
                f"no L2 adapter #{index}: adapters are numbered 1..{len(adapters)} "
                "in --l2-adapter order",
            )
        return [numbered[index - 1]]
    named = [(i, a) for i, a in numbered if a.name == text]
    if not named:
        names = ", ".join(a.name for a in adapters) or "none configured"
        raise HTTPException(400, f"no L2 adapter of type {text!r} (adapters: {names})")
    if len(named) > 1:
        raise HTTPException(
            400, f"{len(named)} L2 adapters are of type {text!r}: name one by its number"
        )
    return named


# -- configuration ----------------------------------------------------------------------


@router.get("/config", summary="The resolved configuration, secrets masked")
def config(request: Request) -> dict[str, Any]:
    """Every flag group with its resolved values; tokens, passwords and keys are masked."""
    return _context(request).config.public_dict()


def _l1_document(l1: L1Manager) -> dict[str, Any]:
    return {
        "tier": "l1",
        "kind": l1.arena.kind,
        "shm_name": l1.arena.shm_name,
        **l1.usage().as_dict(),
        "is_healthy": not l1.closed,
    }


@router.get("/config/adapters", summary="The live L1 tier and L2 adapters with their status")
def adapters(request: Request) -> dict[str, Any]:
    """L1, then every L2 adapter in cascade order: its number, type, masked config, status."""
    context = _context(request)
    data_path = context.data_path
    if data_path is None:
        return {"l1": None, "l2": []}
    resolved = context.selection.adapters
    l2 = []
    for (index, adapter), spec in zip(
        _select_adapters(_l2_adapters(data_path), None), resolved, strict=True
    ):
        l2.append(
            {
                "index": index,
                "type": adapter.name,
                "config": mask_secrets(spec.config.model_dump(mode="json")),
                "status": adapter.status(),
            }
        )
    return {"l1": _l1_document(data_path.l1), "l2": l2}


# -- clearing ----------------------------------------------------------------------------


def _clear_l1(l1: L1Manager, force: bool) -> dict[str, Any]:
    removed = l1.clear(force=force)
    after = l1.usage()
    return {
        "tier": "l1",
        "removed": removed,
        # What survives a clear is held by readers (or arrived meanwhile).
        "kept_locked": after.resident_objects,
        "kept_staged": after.staged_objects,
    }


def _l2_removed(data_path: DataPath, index: int, keys: list[ObjectKey]) -> None:
    """Remember what an admin call deleted from adapter #``index``, for miss explanations."""
    removals = data_path.l2.removals if data_path.l2 is not None else None
    if removals is not None and keys:
        removals.record(keys, index, "deleted", time.time())


def _clear_adapter(
    data_path: DataPath, index: int, adapter: L2AdapterV1, force: bool
) -> dict[str, Any]:
    keys = adapter.keys()
    removed = adapter.delete(keys, force=force)
    still = set(adapter.keys()).intersection(keys)
    _l2_removed(data_path, index, [k for k in keys if k not in still])
    return {
        "tier": "l2",
        "adapter": index,
        "adapter_type": adapter.name,
        "removed": removed,
        "kept_locked": len(still),
    }


@router.post("/cache/clear", summary="Remove every object of L1, L2 or both")
async def clear(request: Request) -> dict[str, Any]:
    """Body ``{"tier": "l1"|"l2"|"all", "force": false}`` (empty: L1, not forced).

    Objects a reader holds (L1 read locks, L2 pins) are kept unless ``force``;
    L1 objects still being written are always kept. The answer counts both.
    """
    body = parse_body(ClearBody, await read_body(request, MAX_JSON_BODY_BYTES), empty_ok=True)
    data_path = _data_path(request)

    def work() -> list[dict[str, Any]]:
        results = []
        if body.tier in ("l1", "all"):
            results.append(_clear_l1(data_path.l1, body.force))
        if body.tier in ("l2", "all"):
            for index, adapter in _select_adapters(_l2_adapters(data_path), None):
                results.append(_clear_adapter(data_path, index, adapter, body.force))
        return results

    return {"tier": body.tier, "force": body.force, "results": await run_in_threadpool(work)}


# -- listing and deleting objects ----------------------------------------------------------------


@router.get("/cache/objects", summary="Page through the objects of L1 or of L2 adapters")
def objects(
    request: Request,
    tier: str = Query("l1", description="l1 or l2"),
    adapter: str | None = Query(None, description="L2 adapter number (from 1) or type name"),
    model_name: str | None = Query(None, description="Only this model's objects"),
    cache_salt: str | None = Query(None, description="Only this salt's objects ('' for none)"),
    page_size: int = Query(500, description=f"1..{MAX_PAGE_SIZE}"),
    page_token: str | None = Query(None, description="next_page_token of the previous page"),
) -> dict[str, Any]:
    """Objects in a stable order, ``page_size`` at a time; follow ``next_page_token``."""
    if tier not in ("l1", "l2"):
        raise HTTPException(400, f"tier must be 'l1' or 'l2', not {tier!r}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise HTTPException(400, f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    if tier == "l1" and adapter is not None:
        raise HTTPException(400, "adapter applies to tier l2 only")
    data_path = _data_path(request)
    after = decode_token(tier, page_token) if page_token else None
    if tier == "l1":
        sources: list[tuple[int, str | None, list[ObjectKey]]] = [(0, None, data_path.l1.keys())]
    else:
        sources = [
            (index, a.name, a.keys())
            for index, a in _select_adapters(_l2_adapters(data_path), adapter)
        ]
    page = list_page(
        tier,
        sources,
        model_name=model_name,
        cache_salt=cache_salt,
        page_size=page_size,
        after=after,
    )
    return {
        "tier": tier,
        "objects": page.objects,
        "matched": page.matched,
        "next_page_token": page.next_page_token,
    }


def _delete_l1(l1: L1Manager, keys: list[ObjectKey], force: bool) -> dict[str, Any]:
    before = l1.contains(keys)
    removed = l1.delete(keys, force=force)
    after = l1.contains(keys)
    kept = [key_document(k) for k, was, now in zip(keys, before, after, strict=True) if was and now]
    return {
        "tier": "l1",
        "removed": removed,
        "kept_locked": kept,
        "absent": sum(1 for was in before if not was),
    }


def _delete_l2(
    data_path: DataPath, index: int, adapter: L2AdapterV1, keys: list[ObjectKey], force: bool
) -> dict[str, Any]:
    known = set(adapter.keys())
    removed = adapter.delete(keys, force=force)
    remaining = set(adapter.keys())
    _l2_removed(data_path, index, [k for k in keys if k in known and k not in remaining])
    kept = [key_document(k) for k in keys if k in known and k in remaining]
    return {
        "tier": "l2",
        "adapter": index,
        "adapter_type": adapter.name,
        "removed": removed,
        "kept_locked": kept,
        "absent": max(0, len(keys) - removed - len(kept)),
    }


@router.delete("/cache/objects", summary="Delete objects by key from L1, L2 or both")
async def delete_objects(request: Request) -> dict[str, Any]:
    """Body ``{keys: [...], tier: "l2", force: false, adapter: null}``; per tier, what went.

    Each key is ``{chunk_hash_hex, model_name, kv_rank, object_group_id, cache_salt}``
    (the last two default to 0 and ""). Keys a reader holds are kept unless
    ``force`` and listed under ``kept_locked``.
    """
    body = parse_body(DeleteBody, await read_body(request, MAX_JSON_BODY_BYTES), empty_ok=False)
    if body.tier == "l1" and body.adapter is not None:
        raise HTTPException(400, "adapter applies to tier l2 or all only")
    data_path = _data_path(request)
    targets = (
        _select_adapters(_l2_adapters(data_path), body.adapter)
        if body.tier in ("l2", "all")
        else []
    )
    if body.tier == "l2" and not targets:
        raise HTTPException(400, "this server has no L2 adapter (see --l2-adapter)")
    keys = list(dict.fromkeys(k.object_key() for k in body.keys))

    def work() -> list[dict[str, Any]]:
        results = []
        if body.tier in ("l1", "all"):
            results.append(_delete_l1(data_path.l1, keys, body.force))
        for index, adapter in targets:
            results.append(_delete_l2(data_path, index, adapter, keys, body.force))
        return results

    return {"tier": body.tier, "force": body.force, "results": await run_in_threadpool(work)}
