"""One answer in a saved chat, from the question to the saved message: the body of the chat's answer
worker, kept apart from the widgets so that the pane only starts it and shows the outcome."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kbchat.conversations.records import ChatMessage, ChatSummary
from kbchat.records import Answer
from kbchat.service import AnswerStream, ChatService
from kbchat.tui.messages import AnswerMessage, UserMessage

Ui = Callable[..., Any]  # call_ui bound to the app: run a callback on the UI thread, return its result
Fail = Callable[[BaseException], None]  # report a failure (from the worker thread)


@dataclass
class AnswerJob:
    """An answer being generated: what was asked, where it shows and, once done, how it went.

    `chat_id` None: the chat is new and is made first. `again`: the saved question answered again
    (`ask_again`) instead of a new question (`say`). Setting `cancel` stops generation after the
    current token; the partial answer is kept.
    """

    text: str
    question: UserMessage
    view: AnswerMessage
    chat_id: int | None
    again: int | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    answer: Answer | None = None
    saved: ChatMessage | None = None  # the answer as the service saved it, with its provenance
    chat: ChatSummary | None = None  # the chat after the answer (its title, its message count)
    failed: bool = False

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()


def run_answer(service: ChatService, job: AnswerJob, ui: Ui, fail: Fail) -> None:
    """Generate `job` on the calling (worker) thread: make the chat if it is new, `say` the question (or
    `ask_again`), stream the pieces into the view, then read back the saved answer with its provenance.
    Failures go to `fail` and set `job.failed`; nothing is raised."""
    stream: AnswerStream | None = None
    try:
        chat_id = job.chat_id
        if chat_id is None:
            job.chat = service.new_chat()
            chat_id = job.chat.id
        if job.again is None:
            stream = service.say(chat_id, job.text, cancel=job.cancel)
        else:
            stream = service.ask_again(chat_id, job.again, cancel=job.cancel)
        for piece in stream:
            if not ui(job.view.append, piece):  # the UI is gone
                stream.close()
    except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
        job.failed = True
        fail(error)
    job.answer = stream.answer if stream is not None else None
    if job.answer is None or job.answer.message_id is None or job.failed:
        return
    try:
        chat = service.chat(chat_id)
    except Exception as error:  # noqa: BLE001 - the answer stands; only its provenance is missing
        fail(error)
        return
    job.chat = chat.summary
    job.saved = next((m for m in chat.messages if m.id == job.answer.message_id), None)
