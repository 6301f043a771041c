"""The contract every front end talks to: the local facade and the HTTP client both implement it."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from kbchat.records import Answer, EditRecord, EngineInfo, ParsedEdit, ProgressFn, no_progress

Message = Mapping[str, str]  # {"role": "user" | "assistant" | "system", "content": "..."}


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


@runtime_checkable
class ChatService(Protocol):
    """What the TUI, the CLI and the HTTP server need from kbchat, local or remote."""

    def info(self) -> EngineInfo: ...

    def ask(self, text: str, *, history: Sequence[Message] = (), memory: bool = True,
            max_new_tokens: int | None = None) -> Answer: ...

    def stream(self, text: str, *, history: Sequence[Message] = (), memory: bool = True,
               max_new_tokens: int | None = None, cancel: threading.Event | None = None) -> AnswerStream: ...

    def parse(self, text: str) -> ParsedEdit: ...

    def edit(self, text: str, *, method: str | None = None, probes: Sequence[str] = (),
             progress: ProgressFn = no_progress) -> EditRecord: ...

    def revert(self, edit_id: int) -> EditRecord: ...

    def edits(self, *, status: str | None = None) -> list[EditRecord]: ...

    def get_edit(self, edit_id: int) -> EditRecord: ...

    def commit(self, *, progress: ProgressFn = no_progress) -> list[EditRecord]: ...

    def close(self) -> None: ...
