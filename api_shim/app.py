"""The FastAPI application: thin routes over the command intake and the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim import openapi, problems
from api_shim.batch_process import BatchIntakeProcess
from api_shim.guard import GuardMiddleware, KeyCache
from api_shim.intake import Intake
from api_shim.outcomes import OutcomeListener, outcomes_in
from api_shim.routes import batches, campaigns, conversations, operations, outbound
from api_shim.routes.operations import readiness_redis
from api_shim.subscription import Subscription
from core import collector
from core.settings import get_settings
from schemas.api import BlockingConversation, InitiateOutboundRequest
from schemas.batches import InitiateOutboundBatchRequest
from worker import metrics
from worker.celery_app import use_broker
from worker.runtime import resolved_urls
from worker.store import workspaces
from worker.store.db import get_engine


def create_app() -> FastAPI:
    settings = get_settings()
    database_url, redis_url = resolved_urls()
    engine = get_engine(database_url)
    use_broker(redis_url)

    def lookup(api_key: str):  # type: ignore[no-untyped-def]
        with engine.connect() as conn:
            return workspaces.workspace_of_key(conn, api_key)

    keys = KeyCache(lookup)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        listener = OutcomeListener(redis_url, recheck=outcomes_in(engine))
        revocations = Subscription(
            redis_url,
            "revoked_keys",
            keys.on_revocation,
            channels=[workspaces.REVOKED_KEYS_CHANNEL],
            on_subscribed=keys.on_subscribed,
        )
        await asyncio.gather(listener.start(), revocations.start())
        app.state.engine = engine
        app.state.redis = readiness_redis(redis_url)
        app.state.intake = Intake(engine, listener, settings.sync_wait_s)
        app.state.batch_intake = BatchIntakeProcess(database_url, redis_url, settings.log_format)
        await app.state.batch_intake.warm_up()
        collector.after_start_up()
        yield
        app.state.batch_intake.close()
        await asyncio.gather(listener.stop(), revocations.stop())
        await app.state.redis.aclose()

    app = FastAPI(
        title="LeadScout Outbound",
        version="1.0.0",
        description="Starts AI-controlled outbound WhatsApp conversations with known leads.",
        lifespan=lifespan,
    )
    problems.install(app)
    app.include_router(outbound.router)
    app.include_router(batches.router)
    app.include_router(conversations.router)
    app.include_router(campaigns.router)
    app.include_router(operations.router)

    app.add_middleware(GuardMiddleware, keys=keys)
    app.add_middleware(RequestMetrics)
    openapi.install(
        app,
        InitiateOutboundRequest,
        InitiateOutboundBatchRequest,
        conversations.HandoffRequest,
        BlockingConversation,
    )
    return app


class RequestMetrics:
    """Requests by route template and status, and their latency."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()  # keep-alive requests share a context
        started, status = time.perf_counter(), 500

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            metrics.HTTP_LATENCY.labels(scope["method"], route).observe(
                time.perf_counter() - started
            )
