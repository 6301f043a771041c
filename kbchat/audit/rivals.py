"""The rival answer an edit is checked against: what the model says before the edit.

The rival is the model's own *chat* answer to the relation's question ("Where is the Eiffel Tower?"
→ "…located in Paris, France." → "Paris"), which is what a user saw; its raw continuation of the
edit prompt ("The Eiffel Tower is located in" → "the Champ de la Corée") is only a second rival.
"""

from __future__ import annotations

import re

from kbchat.audit.checks import EditView
from kbchat.audit.probes import CHAT_ANSWER, RAW_CONTINUATION
from kbchat.audit.relations import questions
from methods import EditRequest

_END = re.compile(r"[.,;:!?\n(]| and | but | which | where | who ")
_LEADING = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)
MAX_WORDS = 5


def chat_rival(answer: str, request: EditRequest) -> str | None:
    """The object the chat answer gives for the request's relation, or None when it does not say.

    The answer is read after the relation's words as the prompt has them ("is located in"), or
    failing that after their last two words ("located in"): "The Eiffel Tower is located in Paris,
    France." gives "Paris".
    """
    relation = request.prompt.replace(request.subject, " ", 1).split()
    for size in dict.fromkeys(n for n in (len(relation), 2, 1) if 0 < n <= len(relation)):
        words = relation[-size:]
        found = re.search(r"\b" + r"\s+".join(map(re.escape, words)) + r"\s+", answer, flags=re.IGNORECASE)
        if found:
            return _object(answer[found.end():])
    return None


def find_rivals(view: EditView, request: EditRequest) -> dict[str, str]:
    """{CHAT_ANSWER: …, RAW_CONTINUATION: …} from the model before the edit (either may be missing).

    The answers are the audit's own "before" generations, so this costs nothing extra."""
    question = questions(request)[0]
    found = {CHAT_ANSWER: chat_rival(view.generate(question, edited=False), request),
             RAW_CONTINUATION: raw_rival(view.complete(request.text, edited=False))}
    return {kind: text for kind, text in found.items() if text}


def raw_rival(continuation: str) -> str | None:
    """The first phrase of the model's raw continuation of the prompt."""
    return _object(continuation, articles=False)


def _object(text: str, *, articles: bool = True) -> str | None:
    cut = _END.split(text.strip(), maxsplit=1)[0].strip()
    if articles:
        cut = _LEADING.sub("", cut)
    words = cut.split()
    return " ".join(words[:MAX_WORDS]) or None
