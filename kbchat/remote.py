"""`RemoteChat`: the ChatService of a kbchat host, over HTTP, so the TUI and the CLI work unchanged.

Errors the host reports come back as the same KbchatError subclasses with the host's message (the
error body's `code` names the class, `kbchat.errors.error_class` finds it); network failures become a
KbchatError that names the URL.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from kbchat.config import data_dir, env_token
from kbchat.conversations.records import Chat, ChatSummary, SearchHit
from kbchat.errors import KbchatError, UnsupportedOperation
from kbchat.records import (
    Answer,
    EditRecord,
    EngineInfo,
    ParsedEdit,
    Progress,
    ProgressFn,
    no_progress,
)
from kbchat.service import AnswerStream, Capabilities, Message
from kbchat.wire import error_from_body, error_from_response, record_from_json, sse_data

TOKEN_FILE = "server-token"  # the host's generated token, in its data dir (kbchat.server.auth writes it)
DEFAULT_TIMEOUT = 600.0  # seconds without a byte from the host; a weight edit on CPU takes ~1 min


def token_path(home: str | os.PathLike[str] | None = None) -> Path:
    """Where a host keeps its generated token: `server-token` in the data dir."""
    return data_dir(home) / TOKEN_FILE


def client_token(token: str | None = None, home: str | os.PathLike[str] | None = None) -> str | None:
    """The token a client sends: `token`, else $KBCHAT_TOKEN, else the host's token file when the host
    runs on this machine with the same data dir, else None."""
    chosen = token or env_token()
    if chosen:
        return chosen
    try:
        return token_path(home).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def base_url(url: str) -> str:
    """The API root for a host URL: `http://gpu:8000`, `.../` and `.../v1` all give `http://gpu:8000/v1`."""
    root = url.strip().rstrip("/")
    if "://" not in root:
        root = "http://" + root
    return root if root.endswith("/v1") else root + "/v1"


class RemoteChat:
    """A `ChatService` backed by a kbchat host (`kbchat serve`). Thread-safe (httpx.Client is).

    url: the host, e.g. http://gpu-box:8000 (with or without /v1).
    token: the host's bearer token (see `client_token` for the usual lookup).
    timeout: seconds to wait for any byte from the host (connecting: 10 s).
    transport: an httpx transport (tests).
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = base_url(url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, transport=transport,
                                    timeout=httpx.Timeout(timeout, connect=10.0))
        self._problems: list[str] | None = None  # the host's integrity problems, read by `connect`
        self._capabilities: Capabilities | None = None

    @classmethod
    def connect(cls, url: str, token: str | None = None, *, home: str | os.PathLike[str] | None = None,
                timeout: float = DEFAULT_TIMEOUT, progress: ProgressFn = no_progress) -> RemoteChat:
        """A RemoteChat that has reached the host and been accepted (token checked); KbchatError if not.

        `token` defaults through `client_token(token, home)`.
        """
        chat = cls(url, client_token(token, home), timeout=timeout)
        try:
            progress(Progress("connect", 0, 1, f"connecting to {chat.url}"))
            chat._problems = list(chat._json("GET", "/info").get("problems") or [])
            progress(Progress("connect", 1, 1, f"connected to {chat.url}"))
        except BaseException:
            chat.close()
            raise
        return chat

    # -- ChatService ------------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        data = self._json("GET", "/info")
        return EngineInfo(model=data["model"], device=data["device"], ledger=data["ledger"],
                          active_memory_edits=int(data["active_memory_edits"]),
                          active_weight_edits=int(data["active_weight_edits"]))

    def capabilities(self) -> Capabilities:
        """The host's, except `export`: that writes a checkpoint where the weights are, not here."""
        if self._capabilities is None:
            hosts = Capabilities.from_json(self._json("GET", "/capabilities"))
            self._capabilities = dataclasses.replace(hosts, export=False)
        return self._capabilities

    def problems(self) -> list[str]:
        """The integrity problems the host reported when this client connected."""
        if self._problems is None:
            self._problems = list(self._json("GET", "/info").get("problems") or [])
        return list(self._problems)

    def verify(self) -> list[str]:
        """The host's integrity problems (ledger rows, deltas, weights); empty when all is well."""
        return list(self._json("GET", "/verify")["problems"])

    def ask(self, text: str, *, history: Sequence[Message] = (), memory: bool = True,
            max_new_tokens: int | None = None) -> Answer:
        started = time.perf_counter()
        data = self._json("POST", "/chat/completions",
                          json=_chat_body(text, history, memory, max_new_tokens, stream=False))
        meta = data.get("kbchat") or {}
        text_out = data["choices"][0]["message"].get("content") or ""
        return Answer(text_out.strip(), tuple(meta.get("used_edits", ())), int(meta.get("tokens", 0)),
                      float(meta.get("seconds", time.perf_counter() - started)))

    def stream(self, text: str, *, history: Sequence[Message] = (), memory: bool = True,
               max_new_tokens: int | None = None, cancel: threading.Event | None = None) -> AnswerStream:
        """Send the question and wait for the host to start answering (errors are raised here); the
        pieces then arrive as the stream is iterated. Cancelling closes the connection, which stops
        generation on the host."""
        started = time.perf_counter()
        response = self._open_stream("/chat/completions",
                                     _chat_body(text, history, memory, max_new_tokens, stream=True))
        meta: dict[str, Any] = {}

        def pieces() -> Iterator[str]:
            try:
                for event in self._events(response):
                    if "kbchat" in event:
                        meta.update(event["kbchat"])
                    for choice in event.get("choices") or ():
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            yield piece
            finally:
                response.close()

        def finish(done: str) -> Answer:
            response.close()  # after a cancel: hang up, so the host stops generating
            return Answer(done.strip(), tuple(meta.get("used_edits", ())), int(meta.get("tokens", 0)),
                          float(meta.get("seconds", time.perf_counter() - started)))

        return AnswerStream(pieces(), finish, cancel)

    def parse(self, text: str) -> ParsedEdit:
        data = self._json("POST", "/parse", json={"text": text})
        return ParsedEdit(raw_text=data["raw_text"], subject=data["subject"], prompt=data["prompt"],
                          target=data["target"], fact=data["fact"])

    def edit(self, text: str, *, method: str | None = None, probes: Sequence[str] = (),
             progress: ProgressFn = no_progress, hparams: Mapping[str, Any] | None = None,
             audit: str = "background") -> EditRecord:
        """Make an edit on the host; with a `progress` sink, the host streams its progress events.

        `audit` ("background", "wait" or "off") chooses when the host runs the edit's checks (in the
        background, `get_edit` shows them as they finish).
        """
        body: dict[str, Any] = {"text": text, "method": method, "probes": list(probes), "audit": audit}
        if hparams:
            body["hparams"] = dict(hparams)
        if progress is no_progress:
            return record_from_json(self._json("POST", "/edits", json=body))
        result = self._progress_stream("/edits", {**body, "stream": True}, progress)
        return record_from_json(result["edit"])

    def revert(self, edit_id: int) -> EditRecord:
        return record_from_json(self._json("POST", f"/edits/{int(edit_id)}/revert"))

    def edits(self, *, status: str | None = None) -> list[EditRecord]:
        params = {"status": status} if status is not None else None
        return [record_from_json(r) for r in self._json("GET", "/edits", params=params)["data"]]

    def get_edit(self, edit_id: int) -> EditRecord:
        return record_from_json(self._json("GET", f"/edits/{int(edit_id)}"))

    def commit(self, *, progress: ProgressFn = no_progress) -> list[EditRecord]:
        if progress is no_progress:
            data = self._json("POST", "/edits/commit", json={"stream": False})["data"]
        else:
            data = self._progress_stream("/edits/commit", {"stream": True}, progress)["edits"]
        return [record_from_json(r) for r in data]

    def export(self, folder: str | Path, format: str = "checkpoint") -> Path:
        flag = "" if format == "checkpoint" else f" --format {format}"
        raise UnsupportedOperation(f"export writes a checkpoint on the machine that holds the weights: run "
                                   f"`kbchat export {folder}{flag}` on the host of {self.url}")

    # -- saved conversations (kept on the host) ------------------------------------------------------

    def chats(self) -> list[ChatSummary]:
        return [ChatSummary.from_json(c) for c in self._json("GET", "/chats")["data"]]

    def new_chat(self, title: str = "") -> ChatSummary:
        return ChatSummary.from_json(self._json("POST", "/chats", json={"title": title}))

    def chat(self, chat_id: int) -> Chat:
        return Chat.from_json(self._json("GET", f"/chats/{int(chat_id)}"))

    def rename_chat(self, chat_id: int, title: str) -> ChatSummary:
        return ChatSummary.from_json(self._json("PATCH", f"/chats/{int(chat_id)}", json={"title": title}))

    def delete_chat(self, chat_id: int) -> None:
        self._json("DELETE", f"/chats/{int(chat_id)}")

    def search_chats(self, text: str, *, limit: int = 50) -> list[SearchHit]:
        data = self._json("GET", "/chats/search", params={"q": text, "limit": limit})["data"]
        return [SearchHit.from_json(h) for h in data]

    def say(self, chat_id: int, text: str, *, memory: bool = True, max_new_tokens: int | None = None,
            cancel: threading.Event | None = None) -> AnswerStream:
        body = {"content": text, "memory": memory, "max_tokens": max_new_tokens}
        return self._chat_stream(f"/chats/{int(chat_id)}/messages", body, cancel)

    def ask_again(self, chat_id: int, message_id: int, *, memory: bool = True,
                  max_new_tokens: int | None = None, cancel: threading.Event | None = None) -> AnswerStream:
        body = {"memory": memory, "max_tokens": max_new_tokens}
        return self._chat_stream(f"/chats/{int(chat_id)}/messages/{int(message_id)}/again", body, cancel)

    def _chat_stream(self, path: str, body: dict[str, Any], cancel: threading.Event | None) -> AnswerStream:
        """Pieces as the host generates them; the host saves the answer and sends it last."""
        response = self._open_stream(path, body)
        saved: dict[str, Any] = {}

        def pieces() -> Iterator[str]:
            try:
                for event in self._events(response):
                    if "piece" in event:
                        yield event["piece"]
                    elif event.get("answer") is not None:
                        saved.update(event["answer"])
            finally:
                response.close()

        def finish(done: str) -> Answer:
            response.close()
            return Answer.from_json(saved) if saved else Answer(done.strip())

        return AnswerStream(pieces(), finish, cancel)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP ---------------------------------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._network_error(exc) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response.json()

    def _open_stream(self, path: str, body: dict[str, Any]) -> httpx.Response:
        request = self._client.build_request("POST", path, json=body)
        try:
            response = self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._network_error(exc) from exc
        if response.status_code >= 400:
            try:
                response.read()
            finally:
                response.close()
            raise error_from_response(response)
        return response

    def _events(self, response: httpx.Response) -> Iterator[dict[str, Any]]:
        """The JSON events of an SSE response up to [DONE]; an error event raises its KbchatError."""
        try:
            for data in sse_data(response.iter_lines()):
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise error_from_body(event, response.status_code)
                yield event
        except httpx.HTTPError as exc:
            raise self._network_error(exc) from exc

    def _progress_stream(self, path: str, body: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
        response = self._open_stream(path, body)
        try:
            for event in self._events(response):
                if "progress" in event:
                    progress(Progress(**event["progress"]))
                else:
                    return event
        finally:
            response.close()
        raise KbchatError(f"{self.url}{path}: the host ended the stream without a result")

    def _network_error(self, exc: httpx.HTTPError) -> KbchatError:
        if isinstance(exc, httpx.TimeoutException):
            return KbchatError(f"the kbchat host at {self.url} did not answer in time ({exc.__class__.__name__})")
        return KbchatError(f"cannot reach the kbchat host at {self.url}: {exc}; is `kbchat serve` running "
                           "there?")


# -- wire formats ---------------------------------------------------------------------------------------


def _chat_body(text: str, history: Sequence[Message], memory: bool, max_new_tokens: int | None,
               stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [*({"role": m["role"], "content": m["content"]} for m in history),
                     {"role": "user", "content": text}],
        "stream": stream,
    }
    if max_new_tokens is not None:
        body["max_tokens"] = max_new_tokens
    if not memory:
        body["kbchat"] = {"memory": False}
    return body
