"""The plumbing between blocking service calls and HTTP: the request body limit, the pump that carries
a worker thread's output to the event loop, and server-sent event responses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kbchat.server.http_errors import error_response

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
        refusal = self._check_declared(scope)
        if refusal is not None:
            await self._reject(send, *refusal)
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
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    def _check_declared(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) when the Content-Length header alone settles it."""
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is None:
            return None
        try:
            too_big = int(declared) > self.max_bytes
        except ValueError:
            return 400, "Content-Length is not a number"
        return (413, self._too_big()) if too_big else None

    def _too_big(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes} bytes"

    @staticmethod
    async def _reject(send: Send, status: int, message: str) -> None:
        code = "request_too_large" if status == 413 else "bad_request"
        await error_response(status, message, "invalid_request_error", code)({"type": "http"}, _no_receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over `body` first, then whatever the client sends next."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


# -- running blocking work ----------------------------------------------------------------------------


class Pump:
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


# -- server-sent events ---------------------------------------------------------------------------------


class EventStream(StreamingResponse):
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
