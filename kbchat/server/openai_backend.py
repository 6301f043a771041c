"""`OpenAIBackendChat`: memory edits in front of any OpenAI-compatible engine (vLLM, llama.cpp, TGI).

The engine holds the weights; this service holds the ledger and the scope index. On each question the
in-scope memory edits are retrieved exactly as the local facade does (subject match, then nearest
key vectors) and stated to the engine in a system message as quoted data, never as instructions.

What needs the weights in process is refused with `UnsupportedOperation`: weight edits (rome, memit,
alphaedit, ft), `serac` (its in-model patch), `commit`, and reverting a weight edit. The way to put
weight edits on such an engine is to make them on a local kbchat and deploy `kbchat export FOLDER`.
Existing serac edits in a shared ledger are served here as stated facts.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from kbchat.config import WEIGHT_METHODS, check_edit_options, data_dir, default_db_url
from kbchat.conversations.keeper import ChatKeeper, ConversationCalls, char_budget
from kbchat.errors import KbchatError, UnsupportedOperation
from kbchat.ledger import Ledger, NewEdit, StoredEdit
from kbchat.memory import Embedder
from kbchat.memory.active import facts_message
from kbchat.memory.book import MemoryBook
from kbchat.parsing import parse_edit
from kbchat.records import Answer, EditRecord, EngineInfo, ParsedEdit, Progress, ProgressFn, no_progress
from kbchat.remote import base_url
from kbchat.service import AnswerStream, AskByStreaming, Capabilities, Message, question_text
from kbchat.wire import sse_data

DEFAULT_MAX_NEW_TOKENS = 80
DEFAULT_METHOD = "ike"  # in-context: the only memory method that needs no weights in process


CONTEXT_CHARS = 12_000  # history budget of saved chats: the engine's tokenizer is not at hand here


class OpenAIBackendChat(AskByStreaming, ConversationCalls):
    """A `ChatService` answering through an OpenAI-compatible engine, with kbchat's memory edits in front.

    ledger: the ledger (its active memory edits are indexed on construction).
    embedder: the sentence embedder for the scope index.
    engine_url: the engine's API root (`http://gpu:8001` or `.../v1`).
    model: the model name the engine serves (see `open` to ask the engine).
    api_key: sent as a bearer token to the engine, if it wants one.
    transport: an httpx transport (tests).

    Answers are greedy (temperature 0). Thread-safe: edits and reverts are serialized; answers read
    the index concurrently.
    """

    def __init__(self, ledger: Ledger, embedder: Embedder, *, engine_url: str, model: str,
                 api_key: str | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 timeout: float = 120.0, transport: httpx.BaseTransport | None = None) -> None:
        self.ledger = ledger
        self.embedder = embedder
        self.engine_url = base_url(engine_url)
        self.model = model
        self.max_new_tokens = max_new_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.engine_url, headers=headers, transport=transport,
                                    timeout=httpx.Timeout(timeout, connect=10.0))
        self.book = MemoryBook(ledger, embedder)
        self._edit_lock = threading.Lock()
        self._problems = self._restore()
        self.conversations = ChatKeeper(ledger.chat_log(), self.stream, self.get_edit, lambda: self.model,
                                        char_budget(CONTEXT_CHARS))

    @classmethod
    def open(cls, engine_url: str, *, model: str | None = None, api_key: str | None = None,
             db: str | None = None, home: str | os.PathLike[str] | None = None, device: str | None = None,
             progress: ProgressFn = no_progress, transport: httpx.BaseTransport | None = None,
             ) -> OpenAIBackendChat:
        """Open the ledger, load the embedder and reach the engine.

        `model` defaults to the first model the engine lists at /v1/models; `api_key` to
        $OPENAI_API_KEY. Raises KbchatError if the engine cannot be reached.
        """
        home_dir = data_dir(home)
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        chosen = model or _first_model(base_url(engine_url), key, transport)
        ledger = Ledger.open(db or default_db_url(home_dir))
        try:
            progress(Progress("load", 0, 1, "loading the embedding model"))
            embedder = Embedder.load(device=device or "cpu")
            return cls(ledger, embedder, engine_url=engine_url, model=chosen, api_key=key, transport=transport)
        except BaseException:
            ledger.close()
            raise

    def _restore(self) -> list[str]:
        rows = self.book.load()
        problems = []
        weight = self.ledger.active(kind="weight")
        if weight:
            problems.append(
                f"the ledger has {len(weight)} active weight edit(s); answers from {self.engine_url} include "
                "them only if the engine serves a checkpoint or LoRA adapter exported after them "
                "(`kbchat export DIR [--format lora]`; an adapter as --engine-model)")
        if any(r.method == "serac" for r in rows):
            problems.append("serac edits are served as stated facts only: their in-model patches need "
                            "the weights in process")
        return problems

    # -- ChatService ------------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        return EngineInfo(model=self.model, device=f"OpenAI-compatible engine at {self.engine_url}",
                          ledger=self.ledger.url, active_memory_edits=len(self.book),
                          active_weight_edits=0)

    def capabilities(self) -> Capabilities:
        return Capabilities(methods=(DEFAULT_METHOD,), default_method=DEFAULT_METHOD, weight_edits=False,
                            export=False, hparams=False, audit=False)

    def problems(self) -> list[str]:
        return list(self._problems)

    def retrieve(self, question: str) -> list[StoredEdit]:
        """Active memory edits in scope for `question`, best first."""
        return self.book.retrieve(question)

    def messages_for(self, question: str, history: Sequence[Message] = (),
                     memory: bool = True) -> tuple[list[dict[str, str]], list[StoredEdit]]:
        """What the engine is sent for `question`: (messages, edits stated in them)."""
        used = self.retrieve(question) if memory else []
        messages = [dict(m) for m in history] + [{"role": "user", "content": question}]
        if used:
            messages = [facts_message(used), *messages]
        return messages, used

    def stream(self, text: str, *, history: Sequence[Message] = (), memory: bool = True,
               max_new_tokens: int | None = None, cancel: threading.Event | None = None) -> AnswerStream:
        """Stream the engine's answer to `text` with the in-scope memory edits stated to it."""
        question = question_text(text)
        if self._edit_lock.acquire(blocking=False):  # take in edits other processes made (see MemoryBook.sync)
            try:
                self.book.sync()
            finally:
                self._edit_lock.release()
        messages, used = self.messages_for(question, history, memory)
        body = {"model": self.model, "messages": messages, "stream": True, "temperature": 0,
                "max_tokens": max_new_tokens or self.max_new_tokens}
        started = time.perf_counter()
        counter = {"tokens": 0}

        def pieces() -> Iterator[str]:
            try:
                with self._client.stream("POST", "/chat/completions", json=body) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise self._engine_error(f"HTTP {response.status_code}: {response.text[:300]}")
                    for data in sse_data(response.iter_lines()):
                        if data == "[DONE]":
                            return
                        event = json.loads(data)
                        if "error" in event:
                            raise self._engine_error(str((event["error"] or {}).get("message", event["error"])))
                        for choice in event.get("choices") or ():
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                counter["tokens"] += 1
                                yield piece
            except httpx.HTTPError as exc:
                raise self._engine_error(str(exc)) from exc

        def finish(answer: str) -> Answer:
            return Answer(answer.strip(), tuple(r.id for r in used), counter["tokens"],
                          time.perf_counter() - started)

        return AnswerStream(pieces(), finish, cancel)

    def parse(self, text: str) -> ParsedEdit:
        """The rule-based split (the model-guided refinement of the local facade needs the weights)."""
        return parse_edit(text)

    def edit(self, text: str, *, method: str | None = None, probes: Sequence[str] = (),
             progress: ProgressFn = no_progress, hparams: Mapping[str, Any] | None = None,
             audit: str = "background") -> EditRecord:
        """Record an in-context memory edit and put it in scope; weight methods and serac are refused.

        There is no model here to audit against: the edit carries no checks, whatever `audit` says.
        """
        method = method or DEFAULT_METHOD
        check_edit_options(method, None, audit)
        if method in WEIGHT_METHODS:
            raise UnsupportedOperation(
                f"{method} changes the weights, and they live in the engine at {self.engine_url}, not here: "
                f"make weight edits with a local kbchat (`kbchat edit ... --method {method}`), write the "
                "model out with `kbchat export FOLDER` and serve FOLDER with the engine; memory edits "
                f"(method {DEFAULT_METHOD}) work here")
        if method == "serac":
            raise UnsupportedOperation(
                f"serac patches the model in process, and the weights live in the engine at {self.engine_url}: "
                f"use method {DEFAULT_METHOD} here (the fact is stated to the engine as quoted data)")
        if hparams:
            raise UnsupportedOperation(f"{method} takes no hyperparameters")
        parsed = self.parse(text)
        progress(Progress("index", 0, 1, f"{method}: indexing {parsed.subject}"))
        vector = self.book.key_vector(parsed.subject, parsed.prompt, parsed.target)
        new = NewEdit(
            raw_text=parsed.raw_text, subject=parsed.subject, prompt=parsed.prompt,
            relation=parsed.relation, target=parsed.target, method=method, kind="memory",
            notes=f"made through the OpenAI-compatible engine at {self.engine_url}",
            embedding=vector.astype("float32").tobytes(), embedder=self.book.embedder.name,
        )
        with self._edit_lock:
            stored = self.book.record(new, vector).edit
        progress(Progress("index", 1, 1, f"{method}: edit #{stored.id} active"))
        return self.book.get(stored.id)

    def revert(self, edit_id: int) -> EditRecord:
        """Undo an active memory edit, bringing back the one it superseded, if any."""
        with self._edit_lock:
            row = self.ledger.get(edit_id)
            if row.kind != "memory" and row.status == "active":
                raise UnsupportedOperation(
                    f"edit #{edit_id} is a weight edit: it lives in the checkpoint the engine serves; revert it "
                    "with a local kbchat, then export and redeploy")
            reverted = self.book.revert(edit_id)
        return self.book.get(reverted.edit.id)

    def edits(self, *, status: str | None = None) -> list[EditRecord]:
        return self.book.edits(status=status)

    def get_edit(self, edit_id: int) -> EditRecord:
        return self.book.get(edit_id)

    def commit(self, *, progress: ProgressFn = no_progress) -> list[EditRecord]:
        raise UnsupportedOperation(
            f"commit writes memory edits into the weights, which live in the engine at {self.engine_url}: "
            "commit with a local kbchat on this ledger, then `kbchat export FOLDER` and serve FOLDER")

    def export(self, folder: str | Path, format: str = "checkpoint") -> Path:
        raise UnsupportedOperation(
            f"export writes the weights, which live in the engine at {self.engine_url}: export with a local "
            "kbchat on this ledger")

    def verify(self) -> list[str]:
        return list(dict.fromkeys(self._problems + self.ledger.verify()))

    def close(self) -> None:
        self._client.close()
        self.ledger.close()

    def __enter__(self) -> OpenAIBackendChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------------------

    def _engine_error(self, reason: str) -> KbchatError:
        return KbchatError(f"the engine at {self.engine_url} failed to answer: {reason}")


def _first_model(url: str, api_key: str | None, transport: httpx.BaseTransport | None) -> str:
    """The first model id the engine lists at /models."""
    headers: Mapping[str, str] = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=url, headers=headers, transport=transport, timeout=10.0) as client:
            response = client.get("/models")
            response.raise_for_status()
            listed = [m["id"] for m in response.json().get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise KbchatError(f"cannot list the models of the engine at {url}: {exc}; check --base-url, or name "
                          "the model") from exc
    if not listed:
        raise KbchatError(f"the engine at {url} lists no models: name one")
    return listed[0]
