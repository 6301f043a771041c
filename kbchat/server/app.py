"""The HTTP API over any `ChatService`: OpenAI-compatible chat completions plus the edit ledger.

Endpoints (all under /v1; every one but health and the OpenAPI docs needs `Authorization: Bearer`):

* `POST /chat/completions` — OpenAI format, streamed (SSE) or not (`kbchat.server.chat`).
* `POST /edits`, `GET /edits`, `GET /edits/{id}`, `POST /edits/{id}/revert`, `POST /edits/commit`,
  `POST /parse` — the ledger, as `EditRecord.to_json()` objects (`kbchat.server.edits`).
* `GET /health` (open), `GET /info`, `GET /capabilities`, `GET /models`, `GET /verify`.

Errors are `{"error": {"message", "type", "code"}}`; a kbchat error's status and `code` are its class's
(`kbchat.server.http_errors`), so `kbchat.remote` raises the same exception on the other side.

The module layout: `bodies` (request bodies), `streaming` (body limit, worker pump, SSE), `host` (the
service with its thread pools and time limits), `chat` and `edits` (the routes), `auth` (the token).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI

from kbchat.server.auth import bearer_guard
from kbchat.server.chat import chat_routes
from kbchat.server.chats import chats_routes
from kbchat.server.edits import edit_routes
from kbchat.server.host import Host
from kbchat.server.http_errors import install_error_handlers
from kbchat.server.streaming import BodyLimit
from kbchat.service import ChatService

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_REQUEST_TIMEOUT = 300.0  # seconds; an answer may wait behind a weight edit (~1 min on CPU)
DEFAULT_WORKERS = 16


def create_app(service: ChatService, *, token: str | None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               request_timeout: float = DEFAULT_REQUEST_TIMEOUT, edit_timeout: float | None = None,
               workers: int = DEFAULT_WORKERS, title: str = "kbchat") -> FastAPI:
    """The HTTP app serving `service`.

    token: the bearer token every request but /v1/health and the docs must carry; None disables auth
        (the caller, `serve`, allows that on loopback only).
    max_body_bytes: larger request bodies get 413.
    request_timeout: seconds a chat request may take in all (waiting for the weights included); past
        it the answer is cancelled and the client gets 504 (or, once streaming, an error event).
    edit_timeout: the same for edits and commits (None: no limit). An edit cannot be interrupted: on
        timeout the client gets 504 while the edit finishes and is recorded.
    workers: threads generating answers; chat requests beyond that queue.

    The app does not own `service`: closing it is the caller's job.
    """
    host = Host(service, request_timeout=request_timeout, edit_timeout=edit_timeout, workers=workers)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        host.shutdown()

    app = FastAPI(title=title, version="1", lifespan=lifespan,
                  description="kbchat: chat with a model whose knowledge you correct. OpenAI-compatible "
                              "chat completions plus the ledger of edits.")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    install_error_handlers(app)
    guarded = bearer_guard(token)
    app.include_router(host_routes(host, guarded))
    app.include_router(chat_routes(host, guarded))
    app.include_router(edit_routes(host, guarded))
    app.include_router(chats_routes(host, guarded))
    return app


def host_routes(host: Host, guarded: list[Any]) -> APIRouter:
    """/v1/health (open), /v1/info, /v1/capabilities, /v1/models, /v1/verify."""
    router = APIRouter()
    service = host.service

    @router.get("/v1/health", tags=["host"], summary="Liveness, model, device and active edit counts (no auth)")
    async def health() -> dict[str, Any]:
        info = await host.read(service.info)
        return {"status": "ok", "model": info.model, "device": info.device,
                "active_memory_edits": info.active_memory_edits,
                "active_weight_edits": info.active_weight_edits, "active_edits": info.active_edits}

    @router.get("/v1/info", tags=["host"], dependencies=guarded,
                summary="Engine information including the ledger, and integrity problems found on open")
    async def info() -> dict[str, Any]:
        engine, problems = await host.read(lambda: (service.info(), service.problems()))
        return {**dataclasses.asdict(engine), "active_edits": engine.active_edits, "problems": list(problems)}

    @router.get("/v1/capabilities", tags=["host"], dependencies=guarded,
                summary="What this host can do: edit methods, weight edits, hyperparameters, audits")
    async def capabilities() -> dict[str, Any]:
        return (await host.read(service.capabilities)).to_json()

    @router.get("/v1/models", tags=["chat"], dependencies=guarded, summary="The one model served (OpenAI format)")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": await host.model_name(), "object": "model", "created": 0,
                                            "owned_by": "kbchat"}]}

    @router.get("/v1/verify", tags=["host"], dependencies=guarded,
                summary="Check ledger rows, deltas and weights against their fingerprints")
    async def verify() -> dict[str, Any]:
        problems = await host.read(service.verify)
        return {"ok": not problems, "problems": list(problems)}

    return router
