"""The HTTP API over any `ChatService`: OpenAI-compatible chat completions plus the edit ledger.

Endpoints (all under /v1; every one but health and the OpenAPI docs needs `Authorization: Bearer`):

* `POST /chat/completions` — OpenAI format, streamed (SSE) or not; the last message is the question,
  the earlier ones the history. The response carries `kbchat: {"used_edits": [...], ...}`; a request
  may send `kbchat: {"memory": false}` to answer from the weights alone.
* `POST /edits`, `GET /edits`, `GET /edits/{id}`, `POST /edits/{id}/revert`, `POST /edits/commit`,
  `POST /parse` — the ledger, as `EditRecord.to_json()` objects.
* `GET /health` (open), `GET /info`, `GET /models`, `GET /verify`.

Errors are `{"error": {"message", "type", "code"}}`; `code` names the kbchat error class
(`edit_not_found`, `parse_error`, ...) so `kbchat.remote` can raise the same exception.

The service's methods block (model forward passes, optimisation, SQL), so they run on thread pools
owned by the app: one for answers, one for edits, one for short reads (health, listing), so that none
can starve another. Answers stream from a worker thread through a queue. The service itself keeps
weight edits serialized and answers consistent (the facade's readers-writer lock).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kbchat.config import ALL_METHODS
from kbchat.errors import EditNotFound, KbchatError, ParseError, UnsupportedOperation
from kbchat.records import Answer, EditRecord, Progress
from kbchat.server.auth import token_matches
from kbchat.service import ChatService

log = logging.getLogger("kbchat.server")

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_REQUEST_TIMEOUT = 300.0  # seconds; an answer may wait behind a weight edit (~1 min on CPU)
DEFAULT_WORKERS = 16
MAX_TOKENS_LIMIT = 4096
STATUSES = ("active", "reverted", "failed", "superseded", "committed")  # kbchat.ledger.models.STATUSES


# -- errors -------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An HTTP error with an OpenAI-style body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type_, code, headers


def error_code(exc: BaseException) -> str:
    """`EditNotFound` -> `edit_not_found`: the wire name of a kbchat error class."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def kbchat_status(exc: KbchatError) -> int:
    """The HTTP status for a kbchat error: 422 unreadable edit, 404 unknown id, 409 refused, else 400."""
    if isinstance(exc, ParseError):
        return 422
    if isinstance(exc, EditNotFound):
        return 404
    if isinstance(exc, UnsupportedOperation):
        return 409
    return 400


def error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code}}


def _error_response(status: int, message: str, type_: str, code: str | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code), status_code=status, headers=headers)


def _kbchat_error(exc: KbchatError) -> ApiError:
    return ApiError(kbchat_status(exc), str(exc), "invalid_request_error", error_code(exc))


# -- request bodies -------------------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class KbchatOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    memory: bool = Field(True, description="false: answer from the weights alone, without memory edits")


class ChatRequest(BaseModel):
    """An OpenAI chat request. Sampling options are accepted and ignored: kbchat decodes greedily."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    n: int | None = None
    kbchat: KbchatOptions | None = None


class EditRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description='"SUBJECT → FACT" or "SUBJECT | PROMPT | TARGET"')
    method: str | None = Field(None, description=f"one of {', '.join(ALL_METHODS)}; default: the engine's")
    probes: list[str] = Field(default_factory=list, description="portability probes")
    hparams: dict[str, Any] | None = Field(None, description="hyperparameter overrides (weight methods)")
    audit: Literal["background", "wait", "off"] | None = Field(
        None, description="the edit's checks: filled in the background (default), awaited, or skipped; "
                          "ignored by engines that do not audit")
    stream: bool = Field(False, description="true: stream progress events (SSE), then the edit")


class CommitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stream: bool = False


class ParseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


# -- the body size limit --------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413, whether it says so in Content-Length or
    only turns out that long while reading (chunked uploads, lying headers).

    The body is read here, up to the limit, and replayed to the app; later `receive` calls (a client
    disconnect during a streamed answer) pass through.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await self._reject(send, 400, "Content-Length is not a number")
                return
            if too_big:
                await self._reject(send, 413, self._too_big())
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # disconnected before the body was complete
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send, 413, self._too_big())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_big(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes} bytes"

    @staticmethod
    async def _reject(send: Send, status: int, message: str) -> None:
        await _error_response(status, message, "invalid_request_error", "request_too_large"
                              if status == 413 else "bad_request")({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


# -- running blocking work ----------------------------------------------------------------------------


class _Pump:
    """Runs `produce(emit)` on the pool; each emitted item, then the result or the exception, arrives on
    an asyncio queue as ("item", x), ("done", result) or ("error", exc)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor,
                 produce: Callable[[Callable[[Any], None]], Any]) -> None:
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

        def run() -> None:
            try:
                outcome = ("done", produce(lambda item: put("item", item)))
            except BaseException as exc:  # noqa: BLE001 - handed to the request, which decides
                outcome = ("error", exc)
            try:
                put(*outcome)
            except RuntimeError:  # the event loop has closed: nobody is waiting any more
                pass

        self.future = loop.run_in_executor(pool, run)

    async def next(self, timeout: float | None) -> tuple[str, Any]:
        return await asyncio.wait_for(self.queue.get(), timeout)


class _EventStream(StreamingResponse):
    """An SSE response that calls `on_close` however it ends (finished, client gone, server stopping)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def sse(data: Any) -> str:
    """One server-sent event carrying `data` as JSON (or a literal string such as [DONE])."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n"


# -- the app ---------------------------------------------------------------------------------------------


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
    # Separate pools: a burst of chats waiting behind a weight edit must not make the host look dead
    # (health) or keep a revert from running; queued edits must not hold up listing them.
    answers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kbchat-answer")
    changes = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kbchat-edit")  # serialized anyway
    reads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kbchat-read")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for executor in (answers, changes, reads):
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=title, version="1", lifespan=lifespan,
                  description="kbchat: chat with a model whose knowledge you correct. OpenAI-compatible "
                              "chat completions plus the ledger of edits.")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    async def call(fn: Callable[..., Any], *args: Any, timeout: float | None = None,
                   pool: ThreadPoolExecutor = reads, **kwargs: Any) -> Any:
        """Run a blocking service call on `pool`; KbchatError becomes an ApiError."""
        future = asyncio.get_running_loop().run_in_executor(pool, lambda: fn(*args, **kwargs))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the operation did not finish within {timeout:g} s; it continues on the host",
                           "timeout", "timeout") from None
        except KbchatError as exc:
            raise _kbchat_error(exc) from exc

    # -- auth -----------------------------------------------------------------------------------------

    def authorised(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "missing bearer token: send `Authorization: Bearer TOKEN` (the host's token "
                           "is in server-token in its data dir, or what --token / KBCHAT_TOKEN set)",
                           "authentication_error", "unauthorized", {"WWW-Authenticate": "Bearer"})
        if not token_matches(given.strip(), token):
            raise ApiError(401, "wrong bearer token", "authentication_error", "unauthorized",
                           {"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorised)]

    names: list[str] = []  # the served model's name, read from the service once

    async def model_name() -> str:
        if not names:
            names.append((await call(service.info, timeout=request_timeout)).model)
        return names[0]

    # -- error handlers ---------------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.message, exc.type, exc.code, exc.headers)

    @app.exception_handler(KbchatError)
    async def _kbchat(_request: Request, exc: KbchatError) -> JSONResponse:
        err = _kbchat_error(exc)
        return _error_response(err.status, err.message, err.type, err.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            detail = next(e for e in errors if e.get("type") == "json_invalid")
            reason = (detail.get("ctx") or {}).get("error", "invalid JSON")
            return _error_response(400, f"malformed JSON body: {reason}", "invalid_request_error", "bad_json")
        whole = [e for e in errors if tuple(e.get("loc", ())) == ("body",)]
        if whole:  # no body, or not an object (e.g. a list, or JSON sent without its Content-Type)
            what = "missing" if whole[0].get("type") == "missing" else "not a JSON object"
            return _error_response(400, f"the request body is {what}: send a JSON object with "
                                   "Content-Type: application/json", "invalid_request_error", "bad_json")
        return _error_response(422, "invalid request: " + "; ".join(_describe(e) for e in errors),
                               "invalid_request_error", "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(exc.status_code, str(exc.detail), "invalid_request_error",
                               "not_found" if exc.status_code == 404 else None, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving a request")
        return _error_response(500, f"internal error: {type(exc).__name__}: {exc}", "server_error",
                               "internal_error")

    # -- open endpoints ---------------------------------------------------------------------------------

    @app.get("/v1/health", tags=["host"], summary="Liveness, model, device and active edit counts (no auth)")
    async def health() -> dict[str, Any]:
        info = await call(service.info, timeout=request_timeout)
        return {"status": "ok", "model": info.model, "device": info.device,
                "active_memory_edits": info.active_memory_edits,
                "active_weight_edits": info.active_weight_edits, "active_edits": info.active_edits}

    # -- host information -----------------------------------------------------------------------------

    @app.get("/v1/info", tags=["host"], dependencies=guarded,
             summary="Engine information including the ledger, and integrity problems found on open")
    async def info() -> dict[str, Any]:
        engine = await call(service.info, timeout=request_timeout)
        return {**dataclasses.asdict(engine), "active_edits": engine.active_edits,
                "problems": list(getattr(service, "problems", []) or [])}

    @app.get("/v1/models", tags=["chat"], dependencies=guarded, summary="The one model served (OpenAI format)")
    async def models() -> dict[str, Any]:
        engine = await call(service.info, timeout=request_timeout)
        return {"object": "list", "data": [{"id": engine.model, "object": "model", "created": 0,
                                            "owned_by": "kbchat"}]}

    @app.get("/v1/verify", tags=["host"], dependencies=guarded,
             summary="Check ledger rows, deltas and weights against their fingerprints")
    async def verify() -> dict[str, Any]:
        check = getattr(service, "verify", None)
        if check is None:
            raise ApiError(409, "this engine has nothing to verify", "invalid_request_error",
                           "unsupported_operation")
        problems = await call(check, timeout=request_timeout)
        return {"ok": not problems, "problems": list(problems)}

    # -- chat -----------------------------------------------------------------------------------------

    @app.post("/v1/chat/completions", tags=["chat"], dependencies=guarded, response_model=None,
              summary="OpenAI-compatible chat completion with the knowledge store applied")
    async def chat_completions(body: ChatRequest) -> Any:
        question, history = _conversation(body.messages)
        if body.n not in (None, 1):
            raise ApiError(400, "n must be 1: kbchat decodes greedily, so every choice would be the same")
        limit = body.max_completion_tokens or body.max_tokens
        if limit is not None and limit > MAX_TOKENS_LIMIT:
            raise ApiError(400, f"max_tokens must be at most {MAX_TOKENS_LIMIT}")
        memory = body.kbchat.memory if body.kbchat is not None else True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request_timeout
        cancel = threading.Event()  # set on timeout or when the client goes away

        def produce(emit: Callable[[Any], None]) -> Answer | None:
            # The stream is made, read and dropped on this worker thread: a generator that holds the
            # model's read lock (and thread-local edit selection) is closed where it was opened.
            stream = service.stream(question, history=history, memory=memory, max_new_tokens=limit,
                                    cancel=cancel)
            for piece in stream:
                emit(piece)
            return stream.answer

        pump = _Pump(loop, answers, produce)
        try:
            first = await pump.next(max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            cancel.set()
            raise ApiError(504, f"no answer within {request_timeout:g} s (the host may be busy with a weight "
                           "edit); try again", "timeout", "timeout") from None
        if first[0] == "error":
            raise _as_api_error(first[1])
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = await model_name()
        if not body.stream:
            pieces: list[str] = []
            item = first
            while item[0] == "item":
                pieces.append(item[1])
                try:
                    item = await pump.next(max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    cancel.set()
                    raise ApiError(504, f"the answer did not finish within {request_timeout:g} s",
                                   "timeout", "timeout") from None
            if item[0] == "error":
                raise _as_api_error(item[1])
            answer = item[1] or Answer("".join(pieces).strip())
            return _completion(cid, created, model, answer, limit, memory)

        async def events() -> AsyncIterator[str]:
            yield sse(_chunk(cid, created, model, {"role": "assistant", "content": ""}))
            item = first
            while item[0] == "item":
                yield sse(_chunk(cid, created, model, {"content": item[1]}))
                try:
                    item = await pump.next(max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    cancel.set()
                    yield sse(error_body(f"the answer did not finish within {request_timeout:g} s",
                                         "timeout", "timeout"))
                    yield sse("[DONE]")
                    return
            if item[0] == "error":
                err = _as_api_error(item[1])
                yield sse(error_body(err.message, err.type, err.code))
            else:
                answer = item[1] or Answer("")
                final = _chunk(cid, created, model, {}, _finish_reason(answer, limit))
                final["kbchat"] = _answer_meta(answer, memory)
                yield sse(final)
            yield sse("[DONE]")

        return _EventStream(events(), on_close=cancel.set)

    # -- the ledger -----------------------------------------------------------------------------------

    @app.post("/v1/parse", tags=["edits"], dependencies=guarded,
              summary="How an /edit text would be understood, without editing")
    async def parse(body: ParseBody) -> dict[str, Any]:
        parsed = await call(service.parse, body.text, timeout=request_timeout)
        return {**dataclasses.asdict(parsed), "relation": parsed.relation}

    @app.post("/v1/edits", tags=["edits"], dependencies=guarded, status_code=201, response_model=None,
              summary="Make an edit; with stream=true, progress events (SSE) and then the edit")
    async def create_edit(body: EditRequestBody) -> Any:
        if body.method is not None and body.method not in ALL_METHODS:
            raise ApiError(400, f"unknown method {body.method!r}; choose one of: {', '.join(ALL_METHODS)}",
                           code="unknown_method")
        kwargs: dict[str, Any] = {"method": body.method, "probes": tuple(body.probes)}
        if body.hparams:
            if not _accepts(service.edit, "hparams"):
                raise ApiError(400, "this engine takes no hyperparameter overrides", code="bad_request")
            kwargs["hparams"] = body.hparams
        if body.audit is not None and _accepts(service.edit, "audit"):
            kwargs["audit"] = body.audit

        def run(progress: Callable[[Progress], None]) -> EditRecord:
            return service.edit(body.text, progress=progress, **kwargs)

        if body.stream:
            return await _progress_stream(run, lambda record: {"edit": record.to_json()})
        record = await call(run, _ignore, timeout=edit_timeout, pool=changes)
        return JSONResponse(record.to_json(), status_code=201)

    @app.get("/v1/edits", tags=["edits"], dependencies=guarded, summary="List edits, oldest first")
    async def list_edits(status: str | None = Query(None, description=f"one of {', '.join(STATUSES)}")
                         ) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise ApiError(400, f"unknown status {status!r}; choose one of: {', '.join(STATUSES)}",
                           code="bad_request")
        records = await call(service.edits, status=status, timeout=request_timeout)
        return {"object": "list", "data": [r.to_json() for r in records]}

    @app.post("/v1/edits/commit", tags=["edits"], dependencies=guarded, response_model=None,
              summary="Write the active memory edits into the weights (MEMIT)")
    async def commit(body: CommitBody | None = None) -> Any:
        def run(progress: Callable[[Progress], None]) -> list[EditRecord]:
            return service.commit(progress=progress)

        if body is not None and body.stream:
            return await _progress_stream(run, lambda records: {"edits": [r.to_json() for r in records]})
        records = await call(run, _ignore, timeout=edit_timeout, pool=changes)
        return {"object": "list", "data": [r.to_json() for r in records]}

    @app.get("/v1/edits/{edit_id}", tags=["edits"], dependencies=guarded, summary="One edit with its checks")
    async def get_edit(edit_id: int) -> dict[str, Any]:
        record = await call(service.get_edit, edit_id, timeout=request_timeout)
        return record.to_json()

    @app.post("/v1/edits/{edit_id}/revert", tags=["edits"], dependencies=guarded, summary="Undo an active edit")
    async def revert(edit_id: int) -> dict[str, Any]:
        record = await call(service.revert, edit_id, timeout=edit_timeout, pool=changes)
        return record.to_json()

    async def _progress_stream(run: Callable[[Callable[[Progress], None]], Any],
                               result: Callable[[Any], dict[str, Any]]) -> _EventStream:
        """SSE: {"progress": ...} events, then `result(value)` or {"error": ...}, then [DONE].

        The first event is awaited before answering, so an edit refused at once gets a real status code.
        """
        loop = asyncio.get_running_loop()
        pump = _Pump(loop, changes, run)
        try:
            first = await pump.next(edit_timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, f"no progress within {edit_timeout:g} s; the operation continues on the host",
                           "timeout", "timeout") from None
        if first[0] == "error":
            raise _as_api_error(first[1])

        async def events() -> AsyncIterator[str]:
            item = first
            while True:
                kind, value = item
                if kind == "item":
                    yield sse({"progress": dataclasses.asdict(value)})
                elif kind == "done":
                    yield sse(result(value))
                    break
                else:
                    err = _as_api_error(value)
                    yield sse(error_body(err.message, err.type, err.code))
                    break
                item = await pump.next(None)
            yield sse("[DONE]")

        return _EventStream(events(), on_close=lambda: None)  # an edit runs to its end regardless

    return app


# -- helpers ------------------------------------------------------------------------------------------


def _ignore(_: Progress) -> None:
    """Progress sink for requests that do not stream it."""


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, KbchatError):
        return _kbchat_error(exc)
    log.error("unexpected error in a worker", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", "internal_error")


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
    return f"{where or 'body'}: {error.get('msg', 'invalid')}"


def _conversation(messages: Sequence[ChatMessage]) -> tuple[str, list[dict[str, str]]]:
    """(question, history): the last message must be the user's; `developer` counts as `system`."""
    last = messages[-1]
    if last.role != "user":
        raise ApiError(400, f"the last message must be the user's question, not a {last.role!r} message",
                       code="bad_request")
    question = last.text()
    if not question.strip():
        raise ApiError(400, "the question (the last user message) is empty", code="bad_request")
    history = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
               for m in messages[:-1]]
    return question, history


def _finish_reason(answer: Answer, limit: int | None) -> str:
    return "length" if limit is not None and answer.tokens >= limit else "stop"


def _answer_meta(answer: Answer, memory: bool) -> dict[str, Any]:
    return {"used_edits": list(answer.used_edits), "tokens": answer.tokens,
            "seconds": round(answer.seconds, 4), "memory": memory}


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any],
           finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def _completion(cid: str, created: int, model: str, answer: Answer, limit: int | None,
                memory: bool) -> dict[str, Any]:
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                     "finish_reason": _finish_reason(answer, limit)}],
        "kbchat": _answer_meta(answer, memory),
    }
