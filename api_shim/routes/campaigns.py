"""SPEC 4.5: a campaign's counts, as the reporting subscriber built them from events."""

from __future__ import annotations

import re
from uuid import UUID

from fastapi import APIRouter
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from api_shim.deps import EngineDep, WorkspaceId, problem_responses
from api_shim.problems import ApiProblem
from schemas.api import CAMPAIGN_ID_PATTERN
from schemas.errors import ErrorCode
from schemas.reporting import CampaignStats
from worker.store import campaign_stats

router = APIRouter(prefix="/v1/workspaces/{workspaceId}/leadscout/campaigns", tags=["campaigns"])


@router.get(
    "/{campaignId}/stats",
    summary="A campaign's created, reused and rejected initiations, built from events",
    response_model=CampaignStats,
    responses=problem_responses(ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND),
)
async def get_campaign_stats(
    workspaceId: str,
    campaignId: str,
    workspace_id: WorkspaceId,
    engine: EngineDep,
) -> CampaignStats:
    # No campaign registry exists: any well-formed id answers (zeros until events name it).
    # One no request could ever carry is a malformed path id: 404, as SPEC 4 has for those.
    if re.fullmatch(CAMPAIGN_ID_PATTERN, campaignId) is None:
        raise ApiProblem(ErrorCode.NOT_FOUND, "Not a campaign id: 1-128 of A-Z a-z 0-9 . _ - :")
    return await run_in_threadpool(_read, engine, workspace_id, campaignId)


def _read(engine: Engine, workspace_id: UUID, campaign_id: str) -> CampaignStats:
    with engine.connect() as conn:
        return campaign_stats.read(conn, workspace_id, campaign_id)
