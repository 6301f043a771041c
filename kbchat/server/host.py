"""`Host`: what the routes share — the service, its thread pools and the time limits.

The service's methods block (model forward passes, optimisation, SQL), so they run on thread pools
owned by the host: one for answers, one for edits, one for short reads (health, listing), so that none
can starve another. The service itself keeps weight edits serialized and answers consistent.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kbchat.records import Progress
from kbchat.server.http_errors import as_api_error, timeout_error
from kbchat.server.streaming import EventStream, Pump, sse
from kbchat.service import ChatService

ProgressRun = Callable[[Callable[[Progress], None]], Any]  # run(progress) -> result


class Host:
    """The service with its pools and limits.

    request_timeout: seconds a read or an answer may take (waiting included).
    edit_timeout: the same for edits and commits (None: no limit); they cannot be interrupted, so on
        timeout the client is told while the operation finishes on the host.
    workers: threads generating answers; requests beyond that queue.
    """

    def __init__(self, service: ChatService, *, request_timeout: float, edit_timeout: float | None,
                 workers: int) -> None:
        self.service = service
        self.request_timeout = request_timeout
        self.edit_timeout = edit_timeout
        # Separate pools: a burst of chats waiting behind a weight edit must not make the host look dead
        # (health) or keep a revert from running; queued edits must not hold up listing them.
        self.answers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kbchat-answer")
        self.changes = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kbchat-edit")  # serialized anyway
        self.reads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kbchat-read")
        self._model: str | None = None

    def shutdown(self) -> None:
        for executor in (self.answers, self.changes, self.reads):
            executor.shutdown(wait=False, cancel_futures=True)

    async def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` on the read pool, within the request timeout."""
        return await self._run(self.reads, self.request_timeout, fn, *args, **kwargs)

    async def change(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` on the edit pool, within the edit timeout."""
        return await self._run(self.changes, self.edit_timeout, fn, *args, **kwargs)

    async def model_name(self) -> str:
        """The served model's name, read from the service once."""
        if self._model is None:
            self._model = (await self.read(self.service.info)).model
        return self._model

    async def progress_stream(self, run: ProgressRun, result: Callable[[Any], dict[str, Any]]) -> EventStream:
        """SSE: {"progress": ...} events from `run` on the edit pool, then `result(value)` or
        {"error": ...}, then [DONE].

        The first event is awaited before answering, so an operation refused at once gets a real status.
        """
        pump = Pump(asyncio.get_running_loop(), self.changes, run)
        try:
            first = await pump.next(self.edit_timeout)
        except asyncio.TimeoutError:
            raise timeout_error(f"no progress within {self.edit_timeout:g} s; the operation continues on "
                                "the host") from None
        if first[0] == "error":
            raise as_api_error(first[1])

        async def events() -> AsyncIterator[str]:
            kind, value = first
            while kind == "item":
                yield sse({"progress": dataclasses.asdict(value)})
                kind, value = await pump.next(None)
            yield sse(result(value) if kind == "done" else as_api_error(value).body())
            yield sse("[DONE]")

        return EventStream(events(), on_close=lambda: None)  # an edit runs to its end regardless

    async def _run(self, pool: ThreadPoolExecutor, timeout: float | None, fn: Callable[..., Any],
                   *args: Any, **kwargs: Any) -> Any:
        future = asyncio.get_running_loop().run_in_executor(pool, lambda: fn(*args, **kwargs))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            raise timeout_error(f"the operation did not finish within {timeout:g} s; it continues on the "
                                "host") from None


def ignore_progress(_: Progress) -> None:
    """Progress sink for requests that do not stream it."""
