"""SPEC 4.6: health, readiness, metrics. No API key."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api_shim.openapi import PROBLEM_REF, SCHEMAS
from api_shim.problems import PROBLEM_JSON, problem_response
from schemas.errors import ErrorCode

router = APIRouter(tags=["operations"])

# The classic text format, which every Prometheus scrapes; prometheus_client's own
# choose_encoder() answers it too when the scraper asks for nothing else.
METRICS_MEDIA_TYPE = CONTENT_TYPE_PLAIN_0_0_4
READINESS_TIMEOUT_S = 2.0


def readiness_redis(redis_url: str) -> Redis:
    """A client whose PING reflects the server rather than its pool.

    After a Redis restart the pooled connection is dead, and the first command on it
    fails. redis-py's Retry disconnects the failed connection and runs the command
    again on a fresh one, so only a server that stays unreachable fails the probe.
    """
    return Redis.from_url(
        redis_url,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2),
        socket_connect_timeout=READINESS_TIMEOUT_S,
        socket_timeout=READINESS_TIMEOUT_S,
    )


class Health(BaseModel):
    status: Literal["ok"]


class ReadinessChecks(BaseModel):
    postgres: bool
    redis: bool


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: ReadinessChecks


UNREADY_DOC = {
    "description": "ServiceUnavailable: PostgreSQL or Redis is unreachable.",
    "content": {
        PROBLEM_JSON: {
            "schema": {
                "allOf": [
                    PROBLEM_REF,
                    {
                        "required": ["checks"],
                        "properties": {"checks": {"$ref": SCHEMAS + "ReadinessChecks"}},
                    },
                ]
            }
        }
    },
}


@router.get("/healthz", operation_id="healthz", summary="The process is up", response_model=Health)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="PostgreSQL and Redis are reachable",
    response_model=Readiness,
    responses={503: UNREADY_DOC},
)
async def readyz(request: Request) -> JSONResponse:
    checks = {
        "postgres": await run_in_threadpool(_postgres_ok, request),
        "redis": await _redis_ok(request),
    }
    if all(checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    return problem_response(
        ErrorCode.SERVICE_UNAVAILABLE, "PostgreSQL or Redis is unreachable.", checks=checks
    )


def _postgres_ok(request: Request) -> bool:
    """The engine pings a pooled connection before use (``pool_pre_ping``)."""
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


async def _redis_ok(request: Request) -> bool:
    try:
        return bool(await request.app.state.redis.ping())
    except Exception:
        return False


METRICS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format 0.0.4.",
        "content": {METRICS_MEDIA_TYPE: {"schema": {"type": "string"}}},
    }
}


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses=METRICS_DOC,
)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=METRICS_MEDIA_TYPE)
