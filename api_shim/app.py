"""The FastAPI application: thin routes over the command intake and the store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim import problems
from api_shim.guard import GuardMiddleware, KeyCache
from api_shim.intake import Intake
from api_shim.outcomes import OutcomeListener
from api_shim.routes import conversations, operations, outbound
from core.settings import get_settings
from schemas.api import InitiateOutboundRequest
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        listener = OutcomeListener(redis_url)
        await listener.start()
        app.state.engine = engine
        app.state.redis = Redis.from_url(redis_url)
        app.state.intake = Intake(engine, listener, settings.sync_wait_s)
        yield
        await listener.stop()
        await app.state.redis.aclose()

    app = FastAPI(
        title="LeadScout Outbound",
        version="1.0.0",
        description="Starts AI-controlled outbound WhatsApp conversations with known leads.",
        lifespan=lifespan,
    )
    problems.install(app)
    app.include_router(outbound.router)
    app.include_router(conversations.router)
    app.include_router(operations.router)

    def lookup(api_key: str):  # type: ignore[no-untyped-def]
        with engine.connect() as conn:
            return workspaces.workspace_of_key(conn, api_key)

    app.add_middleware(GuardMiddleware, keys=KeyCache(lookup))
    app.add_middleware(RequestMetrics)
    _document(app)
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


def _document(app: FastAPI) -> None:
    """Adds the bodies the endpoints read themselves, and the problem schema, to OpenAPI."""
    original = app.openapi

    def openapi() -> dict:  # type: ignore[type-arg]
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Problem"] = PROBLEM_SCHEMA
        for model in (InitiateOutboundRequest, conversations.HandoffRequest):
            model_schema = model.model_json_schema(
                by_alias=True, ref_template="#/components/schemas/{model}"
            )
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details; extra members vary by code.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"loc": {"type": "array"}, "msg": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}
