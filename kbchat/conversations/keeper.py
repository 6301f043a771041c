"""The conversation calls of the service contract, written once for every service that answers with
`stream`: the question is saved, earlier turns go to the model (oldest dropped first when they do not
fit in its context), and the answer is saved with its provenance when it finishes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from kbchat.conversations.records import Chat, ChatMessage, ChatSummary, EditUse, SearchHit
from kbchat.errors import ChatNotFound, KbchatError
from kbchat.ledger.chats import ChatLog
from kbchat.records import Answer, EditRecord
from kbchat.service import AnswerStream, Message, question_text

Turn = tuple[str, str | None]  # (question, its latest answer)
Fits = Callable[[Sequence[Message], int | None], bool]  # (messages, max new tokens) -> fit in context?


def turns(messages: Sequence[ChatMessage]) -> list[Turn]:
    """Each question with its latest answer (after "ask again", the newest one), oldest first."""
    latest: dict[int, str] = {}
    for m in messages:
        if m.role == "assistant" and m.reply_to is not None:
            latest[m.reply_to] = m.content
    return [(m.content, latest.get(m.id)) for m in messages if m.role == "user"]


def as_history(kept: Sequence[Turn]) -> list[Message]:
    history: list[Message] = []
    for question, answer in kept:
        history.append({"role": "user", "content": question})
        if answer:
            history.append({"role": "assistant", "content": answer})
    return history


def fit(earlier: Sequence[Turn], question: str, fits: Fits, limit: int | None) -> tuple[list[Turn], int]:
    """The latest turns that fit in the context with `question`, and how many older ones were left out."""
    kept = list(earlier)
    while kept and not fits([*as_history(kept), {"role": "user", "content": question}], limit):
        kept.pop(0)
    return kept, len(earlier) - len(kept)


def char_budget(chars: int) -> Fits:
    """A context measured in characters, for services that cannot count the model's tokens."""
    def fits(messages: Sequence[Message], _limit: int | None) -> bool:
        return sum(len(m["content"]) for m in messages) <= chars
    return fits


@dataclass
class ChatKeeper:
    """Saved conversations for a service: `stream` and `get_edit` are the service's own calls, `model`
    names the model, `fits` bounds the history."""

    log: ChatLog
    stream: Callable[..., AnswerStream]
    get_edit: Callable[[int], EditRecord]
    model: Callable[[], str]
    fits: Fits

    def say(self, chat_id: int, text: str, *, memory: bool = True, max_new_tokens: int | None = None,
            cancel: threading.Event | None = None) -> AnswerStream:
        question = question_text(text)
        earlier = turns(self.log.get(chat_id).messages)
        asked = self.log.append(chat_id, "user", question)
        return self._answer(asked, earlier, memory, max_new_tokens, cancel)

    def ask_again(self, chat_id: int, message_id: int, *, memory: bool = True,
                  max_new_tokens: int | None = None, cancel: threading.Event | None = None) -> AnswerStream:
        """Answer a saved question again, with the turns that came before it; both answers are kept."""
        chat = self.log.get(chat_id)
        at = next((i for i, m in enumerate(chat.messages) if m.id == message_id and m.role == "user"), None)
        if at is None:
            raise ChatNotFound(f"no question #{message_id} in chat #{chat_id}")
        return self._answer(chat.messages[at], turns(chat.messages[:at]), memory, max_new_tokens, cancel)

    def _answer(self, asked: ChatMessage, earlier: list[Turn], memory: bool, limit: int | None,
                cancel: threading.Event | None) -> AnswerStream:
        kept, dropped = fit(earlier, asked.content, self.fits, limit)
        inner = self.stream(asked.content, history=as_history(kept), memory=memory, max_new_tokens=limit,
                            cancel=cancel)

        def finish(text: str) -> Answer:
            answer = inner.answer or Answer(text.strip())
            answer = replace(answer, question_id=asked.id, dropped=dropped)
            if not answer.text:  # stopped before the first word: nothing to keep
                return answer
            saved = self.log.append(asked.chat_id, "assistant", answer.text, reply_to=asked.id,
                                    model=self.model(), weights=answer.weights, edits=self._uses(answer),
                                    dropped=dropped)
            return replace(answer, message_id=saved.id)

        return AnswerStream(iter(inner), finish, inner.cancel)

    def _uses(self, answer: Answer) -> list[EditUse]:
        uses = []
        for edit_id in dict.fromkeys((*answer.used_edits, *answer.weight_edits)):
            try:
                record = self.get_edit(edit_id)
            except KbchatError:  # gone from the ledger meanwhile: keep what is known
                uses.append(EditUse(edit_id, "memory" if edit_id in answer.used_edits else "weight", "?", "unknown"))
                continue
            uses.append(EditUse(edit_id, record.kind, f"{record.subject} → {record.target}", record.status))
        return uses


class ConversationCalls:
    """The contract's conversation calls, forwarded to `self.conversations` (a ChatKeeper)."""

    conversations: ChatKeeper

    def chats(self) -> list[ChatSummary]:
        return self.conversations.log.list()

    def new_chat(self, title: str = "") -> ChatSummary:
        return self.conversations.log.create(title)

    def chat(self, chat_id: int) -> Chat:
        return self.conversations.log.get(chat_id)

    def rename_chat(self, chat_id: int, title: str) -> ChatSummary:
        return self.conversations.log.rename(chat_id, title)

    def delete_chat(self, chat_id: int) -> None:
        self.conversations.log.delete(chat_id)

    def search_chats(self, text: str, *, limit: int = 50) -> list[SearchHit]:
        return self.conversations.log.search(text, limit)

    def say(self, chat_id: int, text: str, *, memory: bool = True, max_new_tokens: int | None = None,
            cancel: threading.Event | None = None) -> AnswerStream:
        return self.conversations.say(chat_id, text, memory=memory, max_new_tokens=max_new_tokens, cancel=cancel)

    def ask_again(self, chat_id: int, message_id: int, *, memory: bool = True,
                  max_new_tokens: int | None = None, cancel: threading.Event | None = None) -> AnswerStream:
        return self.conversations.ask_again(chat_id, message_id, memory=memory, max_new_tokens=max_new_tokens,
                                            cancel=cancel)
