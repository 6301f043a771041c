"""`/v1/chats…`: saved conversations on the host, so a TUI or CLI connected with `--server` keeps its
chats there. An answer in a chat streams as server-sent events: {"piece": text} as it is generated,
then {"answer": Answer} once it is saved (or {"error": …}), then [DONE]."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Query

from kbchat.config import MAX_TOKENS_LIMIT
from kbchat.server.bodies import AgainBody, NewChatBody, RenameChatBody, SayBody
from kbchat.server.chat import Answering
from kbchat.server.host import Host
from kbchat.server.http_errors import ApiError, as_api_error
from kbchat.server.streaming import EventStream, sse
from kbchat.service import AnswerStream


def chats_routes(host: Host, guarded: list[Any]) -> APIRouter:
    router = APIRouter(tags=["chats"], dependencies=guarded)
    service = host.service

    @router.get("/v1/chats", summary="Saved conversations, the most recently used first")
    async def list_chats() -> dict[str, Any]:
        return {"object": "list", "data": [c.to_json() for c in await host.read(service.chats)]}

    @router.post("/v1/chats", status_code=201, summary="A new, empty conversation")
    async def new_chat(body: NewChatBody | None = None) -> dict[str, Any]:
        return (await host.read(service.new_chat, body.title if body else "")).to_json()

    @router.get("/v1/chats/search", summary="Messages of any conversation containing the text")
    async def search(q: str = Query(..., max_length=1000), limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
        hits = await host.read(service.search_chats, q, limit=limit)
        return {"object": "list", "data": [h.to_json() for h in hits]}

    @router.get("/v1/chats/{chat_id}", summary="A conversation with its messages and their provenance")
    async def get_chat(chat_id: int) -> dict[str, Any]:
        return (await host.read(service.chat, chat_id)).to_json()

    @router.patch("/v1/chats/{chat_id}", summary="Rename a conversation")
    async def rename(chat_id: int, body: RenameChatBody) -> dict[str, Any]:
        return (await host.read(service.rename_chat, chat_id, body.title)).to_json()

    @router.delete("/v1/chats/{chat_id}", summary="Delete a conversation and its messages")
    async def delete(chat_id: int) -> dict[str, Any]:
        await host.read(service.delete_chat, chat_id)
        return {"id": chat_id, "deleted": True}

    @router.post("/v1/chats/{chat_id}/messages", response_model=None,
                 summary="Ask in a conversation; the answer streams (SSE) and is saved with its provenance")
    async def say(chat_id: int, body: SayBody) -> EventStream:
        limit = _limit(body.max_tokens)
        return await answer_events(host, lambda cancel: service.say(
            chat_id, body.content, memory=body.memory, max_new_tokens=limit, cancel=cancel))

    @router.post("/v1/chats/{chat_id}/messages/{message_id}/again", response_model=None,
                 summary="Answer a saved question again, as the model stands now")
    async def again(chat_id: int, message_id: int, body: AgainBody | None = None) -> EventStream:
        options = body or AgainBody()
        limit = _limit(options.max_tokens)
        return await answer_events(host, lambda cancel: service.ask_again(
            chat_id, message_id, memory=options.memory, max_new_tokens=limit, cancel=cancel))

    return router


def _limit(max_tokens: int | None) -> int | None:
    if max_tokens is not None and max_tokens > MAX_TOKENS_LIMIT:
        raise ApiError(400, f"max_tokens must be at most {MAX_TOKENS_LIMIT}")
    return max_tokens


async def answer_events(host: Host, open_stream: Callable[..., AnswerStream]) -> EventStream:
    """The answer as SSE; a refusal before the first piece (unknown chat, empty question) is a plain
    HTTP error, a failure later an error event."""
    answering = Answering(host, open_stream)
    first = await answering.next()
    if first[0] == "error":
        raise as_api_error(first[1])

    async def events() -> AsyncIterator[str]:
        item = first
        try:
            while item[0] == "item":
                yield sse({"piece": item[1]})
                item = await answering.next()
            if item[0] == "error":
                raise as_api_error(item[1])
        except ApiError as err:
            yield sse(err.body())
        else:
            yield sse({"answer": item[1].to_json() if item[1] is not None else None})
        yield sse("[DONE]")

    return EventStream(events(), on_close=answering.cancel.set)
