"""`POST /v1/chat/completions`: OpenAI chat, streamed (SSE) or not, with the knowledge store applied.

The last message is the question, the earlier ones the history. The response carries
`kbchat: {"used_edits": [...], "tokens", "seconds", "memory"}`; a request may send
`kbchat: {"memory": false}` to answer from the weights alone. Answers stream from a worker thread
through a queue; a timeout or a client that hangs up cancels generation.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter

from kbchat.config import MAX_TOKENS_LIMIT
from kbchat.records import Answer
from kbchat.server.bodies import ChatMessage, ChatRequest
from kbchat.server.host import Host
from kbchat.server.http_errors import ApiError, as_api_error, timeout_error
from kbchat.server.streaming import EventStream, Pump, sse
from kbchat.service import AnswerStream

Item = tuple[str, Any]  # ("item", piece) | ("done", Answer | None) | ("error", exc)


@dataclass(frozen=True)
class Question:
    """A chat request as the service takes it."""

    text: str
    history: list[dict[str, str]]
    memory: bool
    limit: int | None  # max new tokens


def chat_routes(host: Host, guarded: list[Any]) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", tags=["chat"], dependencies=guarded, response_model=None,
                 summary="OpenAI-compatible chat completion with the knowledge store applied")
    async def chat_completions(body: ChatRequest) -> Any:
        question = read_question(body)
        answering = Answering(host, lambda cancel: host.service.stream(
            question.text, history=question.history, memory=question.memory, max_new_tokens=question.limit,
            cancel=cancel))
        first = await answering.next(f"no answer within {host.request_timeout:g} s (the host may be busy "
                                     "with a weight edit); try again")
        if first[0] == "error":
            raise as_api_error(first[1])
        reply = Reply(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), await host.model_name(), question)
        if not body.stream:
            return await answering.completion(first, reply)
        return EventStream(answering.events(first, reply), on_close=answering.cancel.set)

    return router


def read_question(body: ChatRequest) -> Question:
    """The question of a chat request; ApiError for what kbchat cannot answer."""
    text, history = conversation(body.messages)
    if body.n not in (None, 1):
        raise ApiError(400, "n must be 1: kbchat decodes greedily, so every choice would be the same")
    limit = body.max_completion_tokens or body.max_tokens
    if limit is not None and limit > MAX_TOKENS_LIMIT:
        raise ApiError(400, f"max_tokens must be at most {MAX_TOKENS_LIMIT}")
    memory = body.kbchat.memory if body.kbchat is not None else True
    return Question(text, history, memory, limit)


def conversation(messages: Sequence[ChatMessage]) -> tuple[str, list[dict[str, str]]]:
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


class Answering:
    """One answer being generated on the answer pool, read piece by piece against a deadline.
    `open_stream(cancel)` makes the service's AnswerStream (a plain or a saved-chat answer)."""

    def __init__(self, host: Host, open_stream: Callable[[threading.Event], AnswerStream]) -> None:
        self.host = host
        self.open_stream = open_stream
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + host.request_timeout
        self.cancel = threading.Event()  # set on timeout or when the client goes away
        self.pump = Pump(self.loop, host.answers, self._produce)

    def _produce(self, emit: Callable[[Any], None]) -> Answer | None:
        # The stream is made, read and dropped on this worker thread: a generator that holds the
        # model's read lock (and thread-local edit selection) is closed where it was opened.
        stream = self.open_stream(self.cancel)
        for piece in stream:
            emit(piece)
        return stream.answer

    async def next(self, late: str | None = None) -> Item:
        """The next item; past the deadline, generation is cancelled and a 504 ApiError raised."""
        try:
            return await self.pump.next(max(0.0, self.deadline - self.loop.time()))
        except asyncio.TimeoutError:
            self.cancel.set()
            raise timeout_error(late or f"the answer did not finish within {self.host.request_timeout:g} s"
                                ) from None

    async def completion(self, first: Item, reply: Reply) -> dict[str, Any]:
        """The whole answer as one chat.completion object."""
        pieces: list[str] = []
        item = first
        while item[0] == "item":
            pieces.append(item[1])
            item = await self.next()
        if item[0] == "error":
            raise as_api_error(item[1])
        return reply.completion(item[1] or Answer("".join(pieces).strip()))

    async def events(self, first: Item, reply: Reply) -> AsyncIterator[str]:
        """The answer as chat.completion.chunk events; a failure midway is an error event."""
        yield sse(reply.chunk({"role": "assistant", "content": ""}))
        item = first
        try:
            while item[0] == "item":
                yield sse(reply.chunk({"content": item[1]}))
                item = await self.next()
            if item[0] == "error":
                raise as_api_error(item[1])
        except ApiError as err:
            yield sse(err.body())
        else:
            yield sse(reply.last_chunk(item[1] or Answer("")))
        yield sse("[DONE]")


@dataclass(frozen=True)
class Reply:
    """The response objects of one completion (OpenAI's chat.completion and chat.completion.chunk)."""

    id: str
    created: int
    model: str
    question: Question

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    def last_chunk(self, answer: Answer) -> dict[str, Any]:
        return {**self.chunk({}, self._finish_reason(answer)), "kbchat": self._meta(answer)}

    def completion(self, answer: Answer) -> dict[str, Any]:
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": self._finish_reason(answer)}],
            "kbchat": self._meta(answer),
        }

    def _finish_reason(self, answer: Answer) -> str:
        limit = self.question.limit
        return "length" if limit is not None and answer.tokens >= limit else "stop"

    def _meta(self, answer: Answer) -> dict[str, Any]:
        return {"used_edits": list(answer.used_edits), "tokens": answer.tokens,
                "seconds": round(answer.seconds, 4), "memory": self.question.memory}
