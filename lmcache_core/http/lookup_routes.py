"""``GET /lookups`` and ``GET /lookups/{request_id}``: why did a recent lookup miss?

The server keeps the latest lookup explanation of each of the most recent
requests in a bounded ring
(:class:`~lmcache_core.engine.recent_lookups.RecentLookups`); these routes read
it. An id that was never looked up, or that the ring has forgotten, is a 404.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from fastapi import APIRouter, HTTPException, Query, Request

from lmcache_core.observability.miss_causes import DESCRIPTIONS, MissCause
from lmcache_core.state import ServerContext

if TYPE_CHECKING:
    from lmcache_core.engine.miss_explainer import MissExplainer

router = APIRouter(tags=["lookups"])

MAX_LIST = 1000
"""Most entries ``GET /lookups`` answers."""


def _explainer(request: Request) -> MissExplainer:
    context: ServerContext = request.app.state.context
    data_path = context.data_path
    if data_path is None or data_path.explainer is None:
        raise HTTPException(503, "this server has no data path: there are no lookups")
    return data_path.explainer


@router.get(
    "/lookups",
    summary="The newest lookups and why they missed",
    responses={503: {"description": "No data path"}},
)
def recent_lookups(
    request: Request,
    limit: int = Query(50, ge=1, le=MAX_LIST, description="Most entries, newest first."),
) -> dict[str, Any]:
    """The latest explanation of the newest requests (newest first), and what the ring holds."""
    explainer = _explainer(request)
    recent = explainer.recent
    return {
        "capacity": recent.capacity,
        "size": len(recent),
        "history_bytes": explainer.nbytes,
        "causes": {cause.value: DESCRIPTIONS[cause] for cause in MissCause},
        "lookups": msgspec.to_builtins(recent.newest(limit)),
    }


@router.get(
    "/lookups/{request_id}",
    summary="Why did this request's latest lookup miss?",
    responses={
        404: {"description": "Unknown or forgotten request id"},
        503: {"description": "No data path"},
    },
)
def lookup_explanation(request: Request, request_id: str) -> dict[str, Any]:
    """The request's latest lookup: tokens requested, chunks hit per tier, miss causes."""
    explanation = _explainer(request).recent.get(request_id)
    if explanation is None:
        raise HTTPException(
            404,
            f"no lookup of request {request_id!r} is remembered (never looked up, or older "
            "than the newest lookups the server keeps)",
        )
    body: dict[str, Any] = msgspec.to_builtins(explanation)
    first = explanation.first_miss
    body["first_miss_description"] = (
        DESCRIPTIONS[MissCause(first.cause)] if first is not None else None
    )
    return body
