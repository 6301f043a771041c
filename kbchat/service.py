"""The contract every front end talks to. The local engine, the HTTP client, the OpenAI-backend host
and the tests' scripted fake all implement `ChatService`; the TUI, the CLI and the server call nothing
else, and `capabilities()` says what an implementation can do, so no caller has to probe for it."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kbchat.conversations.records import Chat, ChatSummary, SearchHit
from kbchat.errors import KbchatError
from kbchat.records import Answer, EditRecord, EngineInfo, ParsedEdit, ProgressFn, no_progress

Message = Mapping[str, str]  # {"role": "user" | "assistant" | "system", "content": "..."}


def question_text(text: str) -> str:
    """The question as it is answered: white space folded; KbchatError when nothing is left."""
    question = " ".join(text.split())
    if not question:
        raise KbchatError("empty question: type something to ask")
    return question


EXPORT_FORMATS = ("checkpoint", "lora")


def check_export_format(format: str) -> None:
    """KbchatError unless `format` is one `export` knows."""
    if format not in EXPORT_FORMATS:
        raise KbchatError(f"unknown export format {format!r}: choose {' or '.join(EXPORT_FORMATS)}")


@dataclass(frozen=True)
class Capabilities:
    """What one implementation of the service can do. Operations it cannot do raise
    `UnsupportedOperation` with a message saying where they can be done instead."""

    methods: tuple[str, ...]  # accepted by edit(); the first memory method is usually the default
    default_method: str
    weight_edits: bool  # rome/memit/alphaedit/ft, commit and reverting weight edits
    export: bool  # export(folder, format) writes a checkpoint or a LoRA adapter
    hparams: bool  # edit(hparams=...) is honoured
    audit: bool  # edits are checked (audit modes other than "off" mean something)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "methods": list(self.methods)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Capabilities:
        return cls(methods=tuple(data["methods"]), default_method=str(data["default_method"]),
                   weight_edits=bool(data["weight_edits"]), export=bool(data["export"]),
                   hparams=bool(data["hparams"]), audit=bool(data["audit"]))


class AnswerStream:
    """Text pieces of an answer as they are generated; `answer` is set once the stream is exhausted.

    Iterating runs generation on the consumer's thread; setting `cancel` (or calling `close()`) stops it
    after the current token, and the partial answer is kept in `answer`.
    """

    def __init__(self, pieces: Iterator[str], finish, cancel: threading.Event | None = None) -> None:
        self._pieces = pieces
        self._finish = finish  # callable(text) -> Answer
        self.cancel = cancel or threading.Event()
        self.answer: Answer | None = None
        self._text: list[str] = []

    def __iter__(self) -> Iterator[str]:
        try:
            for piece in self._pieces:
                if self.cancel.is_set():
                    break
                self._text.append(piece)
                yield piece
        finally:
            close = getattr(self._pieces, "close", None)
            if close is not None:  # release what generation holds (locks, selected patches) right away
                close()
            self.answer = self._finish("".join(self._text))

    def close(self) -> None:
        self.cancel.set()

    def text(self) -> str:
        """Consume the stream and return the full text."""
        return self.result().text

    def result(self) -> Answer:
        """Consume the stream and return the finished answer."""
        for _ in self:
            pass
        assert self.answer is not None
        return self.answer


class AskByStreaming:
    """`ask` for a service whose answers come from its `stream`."""

    def ask(self, text: str, *, history: Sequence[Message] = (), memory: bool = True,
            max_new_tokens: int | None = None) -> Answer:
        return self.stream(text, history=history, memory=memory,  # type: ignore[attr-defined]
                           max_new_tokens=max_new_tokens).result()


@runtime_checkable
class ChatService(Protocol):
    """What the TUI, the CLI and the HTTP server need from kbchat, local or remote.

    Errors are `KbchatError` subclasses (their `code` travels over HTTP unchanged). Every method is
    thread-safe.
    """

    def info(self) -> EngineInfo: ...

    def capabilities(self) -> Capabilities: ...

    def problems(self) -> list[str]:
        """Integrity problems found when the service opened (reported, never ignored)."""
        ...

    def verify(self) -> list[str]:
        """Everything wrong with the ledger and the running weights, one line each (empty: all good)."""
        ...

    def ask(self, text: str, *, history: Sequence[Message] = (), memory: bool = True,
            max_new_tokens: int | None = None) -> Answer: ...

    def stream(self, text: str, *, history: Sequence[Message] = (), memory: bool = True,
               max_new_tokens: int | None = None, cancel: threading.Event | None = None) -> AnswerStream: ...

    def parse(self, text: str) -> ParsedEdit: ...

    def edit(self, text: str, *, method: str | None = None, probes: Sequence[str] = (),
             progress: ProgressFn = no_progress, hparams: Mapping[str, Any] | None = None,
             audit: str = "background") -> EditRecord:
        """Parse, compute, record and apply an edit. `audit`: "background" (checks fill in as they
        finish), "wait" (return after them) or "off"."""
        ...

    def revert(self, edit_id: int) -> EditRecord:
        """Undo an active edit; a reverted memory edit brings back the one it superseded."""
        ...

    def edits(self, *, status: str | None = None) -> list[EditRecord]: ...

    def get_edit(self, edit_id: int) -> EditRecord: ...

    def commit(self, *, progress: ProgressFn = no_progress) -> list[EditRecord]:
        """Write the active memory edits into the weights; returns the new edit, then the retired ones."""
        ...

    def export(self, folder: str | Path, format: str = "checkpoint") -> Path:
        """Write into the new or empty `folder` the current weights as a standard checkpoint (format
        "checkpoint"), or the active weight edits as a PEFT LoRA adapter for the base model ("lora")."""
        ...

    # -- saved conversations (kbchat.conversations) ---------------------------------------------------

    def chats(self) -> list[ChatSummary]:
        """Every saved conversation, the most recently used first."""
        ...

    def new_chat(self, title: str = "") -> ChatSummary:
        """A new, empty conversation (untitled ones are named after their first question)."""
        ...

    def chat(self, chat_id: int) -> Chat:
        """A conversation with all its messages and each answer's provenance; ChatNotFound if none."""
        ...

    def rename_chat(self, chat_id: int, title: str) -> ChatSummary: ...

    def delete_chat(self, chat_id: int) -> None: ...

    def search_chats(self, text: str, *, limit: int = 50) -> list[SearchHit]:
        """Messages of any conversation containing `text` (any case), newest first."""
        ...

    def say(self, chat_id: int, text: str, *, memory: bool = True, max_new_tokens: int | None = None,
            cancel: threading.Event | None = None) -> AnswerStream:
        """Ask `text` in a saved conversation: the question is saved at once, the earlier turns go to the
        model (the oldest left out when they do not fit; `Answer.dropped` says how many), and the answer
        is saved with its provenance when the stream finishes (`Answer.message_id`)."""
        ...

    def ask_again(self, chat_id: int, message_id: int, *, memory: bool = True,
                  max_new_tokens: int | None = None, cancel: threading.Event | None = None) -> AnswerStream:
        """Answer saved question `message_id` again, as the model stands now; the new answer is kept
        beside the earlier ones."""
        ...

    def close(self) -> None: ...
