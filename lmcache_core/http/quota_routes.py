"""The quota API: per-``cache_salt`` limits enforced by the ``IsolatedLRU`` policy.

``PUT/GET/DELETE /quota/{cache_salt}`` and ``GET /quota``. A "GB" is a GiB
(1024**3 bytes). The path segment ``_default`` names the empty salt, and
responses write the empty salt that way too. Limits live in the server's
:class:`~lmcache_core.storage.quota.QuotaManager`, in memory only.

The limits are stored whatever the configuration; only tiers whose eviction
policy is isolated (``--eviction-policy IsolatedLRU`` for L1, an adapter's
``eviction`` block for L2) enforce them. Every response says which tiers do
(``enforced_by``), so a limit that nothing enforces is never mistaken for one
that works.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from lmcache_core.http.cache_objects import json_object, read_body
from lmcache_core.state import ServerContext
from lmcache_core.storage.quota import (
    GIB,
    QuotaManager,
    QuotaTableFull,
    check_limit_gb,
    salt_from_path,
    salt_to_path,
)

router = APIRouter(tags=["quota"])

MAX_BODY_BYTES = 4096
"""Largest PUT body read: ``{"limit_gb": ...}`` needs a few dozen bytes."""

NOT_ENFORCED_NOTE = (
    "no tier enforces quotas: neither --eviction-policy nor any L2 adapter's eviction block "
    "uses IsolatedLRU, so limits are stored but nothing is evicted because of them"
)

_SALT_DOC = "The cache salt; `_default` names the empty salt."
_SALT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "An invalid salt"},
    503: {"description": "Not running"},
}
"""The refusals of the routes that only name a salt (GET and DELETE)."""


class QuotaLimitRequest(BaseModel):
    """Body of ``PUT /quota/{cache_salt}``."""

    limit_gb: float = Field(
        ge=0.0,
        allow_inf_nan=False,
        description="The salt's limit in GiB (1024**3 bytes); 0 evicts all of its data.",
    )


class QuotaEnforcement(BaseModel):
    """Which tiers enforce the limits."""

    enforced: bool = Field(description="Whether any tier enforces the limits.")
    enforced_by: list[str] = Field(
        description="Tiers whose eviction policy is IsolatedLRU: `l1`, `l2[<index>]:<type>`."
    )


class QuotaSetResponse(QuotaEnforcement):
    """Answer of ``PUT /quota/{cache_salt}``."""

    cache_salt: str
    limit_gb: float
    status: Literal["ok"] = "ok"


class QuotaInfo(QuotaEnforcement):
    """Answer of ``GET /quota/{cache_salt}``."""

    cache_salt: str
    limit_gb: float = Field(description="The limit in GiB; 0 without a quota.")
    current_usage_gb: float = Field(
        description=(
            "The salt's GiB in the fullest tier that enforces the limit (in the fullest tier "
            "when none does): the figure each enforcing tier keeps under the limit."
        )
    )
    exists: bool = Field(description="Whether the salt has a quota.")
    usage_by_tier_gb: dict[str, float] = Field(description="The salt's GiB in every tier.")


class QuotaDeleteResponse(BaseModel):
    """Answer of ``DELETE /quota/{cache_salt}``."""

    cache_salt: str
    status: Literal["removed", "not_found"]


class QuotaUser(BaseModel):
    """One salt in ``GET /quota``."""

    limit_gb: float
    current_usage_gb: float


class QuotaList(QuotaEnforcement):
    """Answer of ``GET /quota``: every salt with a quota."""

    users: dict[str, QuotaUser]
    persisted: bool = Field(
        description="Whether the table is saved to --quota-state-file (and survives a restart)."
    )
    note: str | None = Field(
        default=None, description="Set when no tier enforces the limits, saying so."
    )


def _quotas(request: Request) -> QuotaManager:
    context: ServerContext = request.app.state.context
    if context.data_path is None:
        raise HTTPException(503, "the data path is not running yet: no quota table")
    return context.data_path.quotas


def _salt(name: str) -> str:
    # The routes match any rest of the path, so a salt with "/" (sent as %2F, which
    # routing decodes) is a clear 400 from validation rather than a bare 404.
    if not name:
        raise HTTPException(400, "invalid cache_salt: empty; the empty salt is named _default")
    try:
        return salt_from_path(name)
    except ValueError as exc:
        raise HTTPException(400, f"invalid cache_salt: {exc}") from None


def _gb(nbytes: int) -> float:
    return nbytes / GIB


def _enforcement(quotas: QuotaManager) -> dict[str, Any]:
    enforced_by = quotas.enforced_by
    return {"enforced": bool(enforced_by), "enforced_by": enforced_by}


async def _limit_from_body(request: Request) -> float:
    """The ``limit_gb`` of a PUT body; a clear 400 (413 if oversized) for anything else."""
    body = await read_body(request, MAX_BODY_BYTES)
    document = json_object(body, shape='{"limit_gb": <number>}')
    if "limit_gb" not in document:
        raise HTTPException(400, 'missing field "limit_gb"')
    unknown = sorted(set(document) - {"limit_gb"})
    if unknown:
        raise HTTPException(400, f"unknown fields: {unknown}; only limit_gb is accepted")
    try:
        return check_limit_gb(document["limit_gb"])
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


_PUT_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": QuotaLimitRequest.model_json_schema()}},
    }
}


@router.put(
    "/quota/{cache_salt:path}",
    summary="Set a cache salt's quota",
    response_model=QuotaSetResponse,
    responses={
        400: {
            "description": "Bad JSON, missing, non-numeric, NaN/inf or negative limit_gb, "
            "or an invalid salt"
        },
        409: {"description": "The quota table is full"},
        413: {"description": "The body is too large"},
        507: {"description": "--quota-state-file could not be written; nothing changed"},
        503: {"description": "The data path is not running"},
    },
    openapi_extra=_PUT_BODY_DOC,
)
async def put_quota(cache_salt: str, request: Request) -> QuotaSetResponse:
    """Set (or replace) the salt's limit; ``enforced_by`` says which tiers apply it."""
    salt = _salt(cache_salt)
    quotas = _quotas(request)
    limit_gb = await _limit_from_body(request)
    try:
        entry = quotas.set_limit(salt, limit_gb)
    except QuotaTableFull as exc:
        raise HTTPException(409, str(exc)) from None
    except OSError as exc:
        raise _not_saved(exc) from None
    return QuotaSetResponse(
        cache_salt=salt_to_path(salt), limit_gb=entry.limit_gb, **_enforcement(quotas)
    )


def _not_saved(exc: OSError) -> HTTPException:
    """The answer when ``--quota-state-file`` could not be written (nothing changed)."""
    detail = f"the quota table could not be saved ({exc.strerror or exc}); nothing changed"
    return HTTPException(507, detail)


@router.get(
    "/quota/{cache_salt:path}",
    summary="A cache salt's quota and usage",
    response_model=QuotaInfo,
    responses=_SALT_ERRORS,
)
def get_quota(cache_salt: str, request: Request) -> QuotaInfo:
    """The salt's limit (0 without a quota) and its usage per tier."""
    salt = _salt(cache_salt)
    quotas = _quotas(request)
    entry = quotas.get(salt)
    usage = quotas.usage_by_tier()
    enforcement = _enforcement(quotas)
    compared = quotas.compared_usage(salt, usage, enforcement["enforced_by"])
    return QuotaInfo(
        cache_salt=salt_to_path(salt),
        limit_gb=entry.limit_gb if entry is not None else 0.0,
        current_usage_gb=_gb(compared),
        exists=entry is not None,
        usage_by_tier_gb={tier: _gb(by_salt.get(salt, 0)) for tier, by_salt in usage.items()},
        **enforcement,
    )


@router.delete(
    "/quota/{cache_salt:path}",
    summary="Remove a cache salt's quota (its limit becomes 0)",
    response_model=QuotaDeleteResponse,
    responses={**_SALT_ERRORS, 507: {"description": "--quota-state-file could not be written"}},
)
def delete_quota(cache_salt: str, request: Request) -> QuotaDeleteResponse:
    """Forget the salt's quota; an enforcing tier then evicts its data (allowlist)."""
    salt = _salt(cache_salt)
    try:
        removed = _quotas(request).remove(salt)
    except OSError as exc:
        raise _not_saved(exc) from None
    return QuotaDeleteResponse(
        cache_salt=salt_to_path(salt), status="removed" if removed else "not_found"
    )


@router.get(
    "/quota",
    summary="Every cache salt with a quota",
    response_model=QuotaList,
    responses={503: {"description": "Not running"}},
)
def list_quotas(request: Request) -> QuotaList:
    """Every salt with a quota, its limit and usage, and which tiers enforce the limits."""
    quotas = _quotas(request)
    usage = quotas.usage_by_tier()
    enforcement = _enforcement(quotas)
    users = {
        salt_to_path(salt): QuotaUser(
            limit_gb=entry.limit_gb,
            current_usage_gb=_gb(quotas.compared_usage(salt, usage, enforcement["enforced_by"])),
        )
        for salt, entry in sorted(quotas.limits().items())
    }
    note = None if enforcement["enforced"] else NOT_ENFORCED_NOTE
    return QuotaList(users=users, persisted=quotas.persistent, note=note, **enforcement)
