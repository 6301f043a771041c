""""Correct this answer": the `/edit SUBJECT → FACT` line guessed from a question and its answer.

Pure and deterministic, so the guess is the same every time and testable without a UI. The guess only
prefills the input: the user changes it and nothing is edited before they press Enter (and confirm).
"""

from __future__ import annotations

import re

from kbchat.tui.chat_format import plain_text

# Words that start a question or a sentence without naming anything ("Where is …", "Tell me …").
_OPENERS = frozenset("""
    what where who whom whose when why how which is are was were do does did can could will would should
    tell name list give please in on at the a an and but so if
""".split())
# Lower-case words that may sit inside a name: "Statue of Liberty", "Leonardo da Vinci".
_JOINERS = frozenset("of de del della da di la le du von van der den y and &".split())
# Words that are no part of a noun phrase, for the fallback when nothing is capitalised.
_FUNCTION_WORDS = _OPENERS | frozenset("""
    it its this that these those there here me my your his her our their they them he she we you i
    located situated found built made born called named known live lives living lived stand stands
    has have had be been being to for from with by about as than then into onto over under near
    not no yes very really also just only some any much many more most tallest biggest largest
""".split())
_TOKEN = re.compile(r"[^\W_][\w'’.-]*[^\W_]|[^\W_]|[.!?:;]")
_SENTENCE_END = frozenset(".!?:;")
_FIRST_SENTENCE = re.compile(r"(.+?[.!?])(?=\s|$)", re.DOTALL)
SUBJECT_PLACEHOLDER = "SUBJECT"


def _tokens(text: str) -> list[tuple[str, bool]]:
    """Words of `text`, each with whether it starts a sentence (punctuation marks are dropped)."""
    words: list[tuple[str, bool]] = []
    start = True
    for token in _TOKEN.findall(text):
        if token in _SENTENCE_END:
            start = True
            continue
        words.append((token, start))
        start = False
    return words


def _capitalised(word: str, *, inside: bool = False) -> bool:
    """A word that can be part of a name; a number only inside one ("Apollo 11", not "1889")."""
    return word[0].isupper() or (inside and word[0].isdigit())


def _capitalised_runs(words: list[tuple[str, bool]]) -> list[list[str]]:
    """Runs of capitalised words (with joiners between them). A capitalised word that starts a
    sentence counts only when the next word is capitalised too, and never when it is a question word."""
    runs: list[list[str]] = []
    run: list[str] = []
    for i, (word, starts) in enumerate(words):
        following = words[i + 1][0] if i + 1 < len(words) else ""
        if _capitalised(word, inside=bool(run)) and not (starts and (word.casefold() in _OPENERS
                                                   or not (following and _capitalised(following)))):
            run.append(word)
        elif run and word.casefold() in _JOINERS and following and _capitalised(following):
            run.append(word)
        else:
            if run:
                runs.append(run)
            run = []
    if run:
        runs.append(run)
    return runs


def _last_noun_phrase(words: list[tuple[str, bool]]) -> str:
    """The last run of words that are not function words ("capital of france" in "what is the capital of
    france?"); empty when there is none."""
    runs: list[list[str]] = [[]]
    for i, (word, _) in enumerate(words):
        folded = word.casefold()
        following = words[i + 1][0].casefold() if i + 1 < len(words) else ""
        if folded not in _FUNCTION_WORDS and folded not in _JOINERS:
            runs[-1].append(word)
        elif runs[-1] and folded in _JOINERS and following and following not in _FUNCTION_WORDS:
            runs[-1].append(word)
        elif runs[-1]:
            runs.append([])
    found = [r for r in runs if r]
    return " ".join(found[-1]) if found else ""


def guess_subject(question: str) -> str:
    """What `question` is about: its longest run of capitalised words (the first of equal ones), else its
    last noun phrase; empty when nothing qualifies."""
    words = _tokens(question)
    runs = _capitalised_runs(words)
    if runs:
        return " ".join(max(runs, key=len))  # max keeps the first of the longest
    return _last_noun_phrase(words)


def first_sentence(answer: str) -> str:
    """The answer's first sentence (its claim), as plain text and without the final full stop."""
    text = plain_text(answer)
    match = _FIRST_SENTENCE.match(text)
    sentence = match.group(1) if match else text
    return sentence.rstrip(".").strip()


def correction_line(question: str, answer: str) -> str:
    """`/edit SUBJECT → FACT` for correcting `answer` to `question`: SUBJECT guessed from the question
    (from the answer when the question names nothing; SUBJECT_PLACEHOLDER as a last resort), FACT the
    answer's first sentence."""
    fact = first_sentence(answer)
    subject = guess_subject(question) or guess_subject(fact) or SUBJECT_PLACEHOLDER
    return f"/edit {subject} → {fact}"
