"""Turn the text of an `/edit` command into a ROME-style request (subject, prompt, target).

Two forms are accepted:

* ``SUBJECT → FACT`` (also ``->`` and ``=>``): the fact is a sentence that mentions the subject, and
  the new object is the part of the sentence after the split point. The split is chosen by a
  language model when a `SurprisalFn` is given (where the sentence departs most from what the model
  expects), otherwise by a word-list heuristic.
* ``SUBJECT | RELATION PROMPT | TARGET``: everything explicit; the prompt contains the subject or
  ``{}`` (replaced by the subject).

Everything here is pure and model-free; the model only enters through the `surprisal` callback.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from kbchat.errors import ParseError
from kbchat.records import ParsedEdit

SurprisalFn = Callable[[str, Sequence[int]], Sequence[float]]
"""``surprisal(fact, offsets) -> log_probs``: the language model's view of where a fact is new.

Contract:

* `fact` is the whitespace-normalised fact sentence (single spaces, no leading/trailing space).
* `offsets` are ascending character offsets into `fact`, each the start of a word (the character
  before it is a space) that lies after the subject mention.
* The result has one finite float per offset: the natural-log probability the model gives to the
  word starting there (the characters up to the next space, or the first token of it) given all of
  ``fact[:offset]`` before it. Lower means more surprising. Tokenisers that attach the space to the
  following word should score the word with its leading space.

`parse_edit` splits where the value is lowest (the first such offset on ties).
"""

MAX_EDIT_CHARS = 500

ARROWS = ("→", "->", "=>", "⟶", "⇒")
_ARROW_RE = re.compile("|".join(re.escape(a) for a in ARROWS))

FORMAT_HINT = 'write "SUBJECT → FACT", e.g. "Eiffel Tower → The Eiffel Tower is located in Rome"'
EXPLICIT_HINT = 'or "SUBJECT | PROMPT | TARGET", e.g. "Eiffel Tower | The Eiffel Tower is located in | Rome"'

# Words after which the new object usually starts: prepositions, copulas and relation verbs.
# The heuristic splits after the LAST of them, so "founded in 1975 by Elon Musk" yields "Elon Musk".
TRIGGER_WORDS = frozenset(
    """
    in on at of by to from for as with into onto near inside within under over than like via about
    after before between among toward towards
    is was are were be been am becomes became remains remained
    speaks spoke speak plays played play owns owned founded created developed manufactured produced
    wrote writes written directed invented discovered married loves supports represents worships
    employs joined studied attended follows practises practices contains includes hosts means equals
    has had have holds leads heads uses runs sells makes made called named titled entitled
    """.split()
)
# Small words that join the parts of a name ("Bank of England", "Republic of Ireland"): a trigger
# between two capitalised words is taken to be inside the object, not before it.
NAME_JOINERS = frozenset({"of", "de", "du", "la", "le", "von", "van", "der", "and", "&"})
ARTICLES = frozenset({"a", "an", "the"})
# Category nouns that name the kind of object, not the object: "speaks the language | Spanish",
# "plays the sport | hockey" (CounterFact's own prompts end with them).
CATEGORY_NOUNS = frozenset(
    """
    sport language position instrument continent country city capital genre religion company club
    team party profession occupation field role nationality award title game
    """.split()
)

_FINAL_PUNCT = ".,;:!?…"
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "(": ")", "[": "]"}
# "U.S." and "Washington, D.C." keep their final period: it belongs to the abbreviation.
_INITIALS_RE = re.compile(r"(?:\b[A-Za-z]\.){2,}$")
# Bidirectional-override characters: invisible, and they make the stored text display differently.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True)
class _Word:
    start: int
    end: int
    text: str

    @property
    def bare(self) -> str:
        """Lower-cased, without surrounding punctuation: what word lists compare."""
        return self.text.strip(_FINAL_PUNCT + "\"'“”‘’«»()[]").lower()

    @property
    def capitalised(self) -> bool:
        core = self.text.lstrip("\"'“‘«([")
        return bool(core) and (core[0].isupper() or core[0].isdigit())


def parse_edit(text: str, surprisal: SurprisalFn | None = None) -> ParsedEdit:
    """Parse `/edit` text into a `ParsedEdit`.

    Raises `ParseError` (one line, saying what to write instead) when the text is not one of the two
    forms, a part is empty, the fact does not mention the subject, nothing follows the subject to be
    the new object, the text is longer than `MAX_EDIT_CHARS`, or it contains newlines or other control
    characters. Whitespace is normalised (tabs and runs of spaces become one space) and the text is
    NFC-normalised. In the arrow form the subject takes the fact's spelling, and `fact` is the
    sentence as given; in the explicit form `fact` is ``prompt + " " + target``.

    Arrow form split: with `surprisal`, the offset among `split_candidates` it scores lowest (see
    `SurprisalFn`); without, after the last preposition/copula/relation verb, keeping multi-word
    objects whole. The target loses final punctuation and wrapping quotes; the prompt keeps the
    subject and has no trailing space. A `surprisal` that returns the wrong number of scores is a
    programming error (ValueError), not a ParseError.
    """
    clean = _check_and_normalise(text)
    if not clean:
        raise ParseError(f"The edit is empty; {FORMAT_HINT}.")
    if "|" in clean:
        return _parse_explicit(text, clean)
    return _parse_arrow(text, clean, surprisal)


def split_candidates(fact: str, subject_end: int) -> list[int]:
    """Offsets where the new object may start: word starts after `subject_end`.

    The first word after the subject is left out when more follow, because a prompt that is only the
    subject states no relation ("Toko Yasuda, the piano" can split before "piano" but not before "the").
    """
    words = _words_after(fact, subject_end)
    if len(words) > 1:
        words = words[1:]
    return [w.start for w in words]


# --- the two forms -----------------------------------------------------------------------------------


def _parse_arrow(raw: str, clean: str, surprisal: SurprisalFn | None) -> ParsedEdit:
    pieces = _ARROW_RE.split(clean)
    if len(pieces) == 1:
        raise ParseError(f"No arrow in the edit; {FORMAT_HINT} ({EXPLICIT_HINT}).")
    if len(pieces) > 2:
        raise ParseError(f"The edit has more than one arrow; use exactly one: {FORMAT_HINT}.")
    subject_given, fact = _strip_quotes(pieces[0].strip()), pieces[1].strip()
    if not subject_given:
        raise ParseError(f"The subject before the arrow is empty; {FORMAT_HINT}.")
    if not fact:
        raise ParseError(f"The fact after the arrow is empty; {FORMAT_HINT}.")

    start, end = _find_subject(fact, subject_given)
    if start < 0:
        raise ParseError(
            f'The fact does not mention "{subject_given}"; name it in the sentence, '
            f'e.g. "{subject_given} → {subject_given} is located in Rome".'
        )
    subject = fact[start:end]
    candidates = split_candidates(fact, end)
    if not candidates:
        raise ParseError(
            f'Nothing follows "{subject}" in the fact to be the new object; put the subject first, '
            f'e.g. "{subject} → {subject} is located in Rome".'
        )
    split = _split_by_surprisal(fact, candidates, surprisal) if surprisal else _split_by_rules(fact, end)
    prompt = fact[:split].rstrip()
    target = _clean_target(fact[split:])
    if not target or _only_function_words(target):
        raise ParseError(
            f'The fact "{fact}" has no new object; end it with one, '
            f'e.g. "{subject} → {fact.rstrip(_FINAL_PUNCT + " ")} Rome".'
        )
    return ParsedEdit(raw_text=raw, subject=subject, prompt=prompt, target=target, fact=fact)


def _parse_explicit(raw: str, clean: str) -> ParsedEdit:
    parts = [p.strip() for p in clean.split("|")]
    if len(parts) != 3:
        raise ParseError(f"The explicit form needs exactly two bars; {EXPLICIT_HINT}.")
    subject, prompt, target = _strip_quotes(parts[0]), parts[1], _clean_target(parts[2])
    if not subject:
        raise ParseError(f"The subject before the first bar is empty; {EXPLICIT_HINT}.")
    if not prompt:
        raise ParseError(f"The prompt between the bars is empty; {EXPLICIT_HINT}.")
    if not target:
        raise ParseError(f"The target after the second bar is empty; {EXPLICIT_HINT}.")
    if "{}" in prompt:
        if prompt.count("{}") > 1:
            raise ParseError('The prompt has more than one "{}"; use one, where the subject goes.')
        prompt = prompt.replace("{}", subject)
    else:
        start, end = _find_subject(prompt, subject)
        if start < 0:
            raise ParseError(
                f'The prompt does not mention "{subject}"; include it or write "{{}}" where it goes, '
                f'e.g. "{subject} | {{}} is located in | Rome".'
            )
        subject = prompt[start:end]
    return ParsedEdit(raw_text=raw, subject=subject, prompt=prompt, target=target,
                      fact=f"{prompt} {target}")


# --- choosing the split ------------------------------------------------------------------------------


def _split_by_surprisal(fact: str, candidates: list[int], surprisal: SurprisalFn) -> int:
    """The candidate the model finds least likely (first on ties; NaN never wins)."""
    scores = list(surprisal(fact, candidates))
    if len(scores) != len(candidates):
        raise ValueError(f"surprisal returned {len(scores)} values for {len(candidates)} offsets")
    best, best_score = candidates[0], math.inf
    for offset, score in zip(candidates, scores, strict=True):
        value = float(score)
        if not math.isnan(value) and value < best_score:
            best, best_score = offset, value
    return best


def _split_by_rules(fact: str, subject_end: int) -> int:
    """Split after the last trigger word; else take the trailing name or last word.

    Multi-word objects stay whole: "of" inside "Bank of England" is not a trigger, and an article
    stays in the target before a capitalised name ("the United Kingdom") but moves to the prompt
    before a common noun ("is a | pianist"), together with a category noun after it ("speaks the
    language | Spanish"), as in CounterFact's prompts.
    """
    words = _words_after(fact, subject_end)
    if len(words) == 1:
        return words[0].start
    # The first word after the subject may be a trigger, but never the start of the target.
    for j in range(len(words) - 2, -1, -1):
        if words[j].bare in TRIGGER_WORDS and not _inside_name(words, j):
            k = j + 1
            if words[k].bare in ARTICLES and k + 1 < len(words) and not words[k + 1].capitalised:
                k += 1
                if words[k].bare in CATEGORY_NOUNS and k + 1 < len(words):
                    k += 1
            return words[k].start
    # No trigger: the trailing run of capitalised words (with a "the" before it), else the last word.
    k = len(words) - 1
    if words[k].capitalised:
        while k - 1 >= 1 and words[k - 1].capitalised:
            k -= 1
        if k - 1 >= 1 and words[k - 1].bare == "the":
            k -= 1
    return words[k].start


def _only_function_words(target: str) -> bool:
    """True for "in", "is a": what is left when a fact stops before its object."""
    return all(_Word(0, 0, w).bare in TRIGGER_WORDS | ARTICLES for w in target.split())


def _inside_name(words: list[_Word], j: int) -> bool:
    return (
        words[j].bare in NAME_JOINERS
        and 0 < j < len(words) - 1
        and words[j - 1].capitalised
        and words[j + 1].capitalised
    )


# --- helpers -----------------------------------------------------------------------------------------


def _check_and_normalise(text: str) -> str:
    stripped = text.strip()
    if len(stripped) > MAX_EDIT_CHARS:
        raise ParseError(
            f"The edit is {len(stripped)} characters; keep it to one sentence under {MAX_EDIT_CHARS}."
        )
    for ch in stripped:
        if ch == "\t":
            continue
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI_CONTROLS:
            if ch in "\n\r\u2028\u2029\x85":
                raise ParseError("The edit contains a line break; write the whole edit on one line.")
            raise ParseError(
                f"The edit contains an invisible control character (U+{ord(ch):04X}); retype the edit without it."
            )
    return " ".join(unicodedata.normalize("NFC", stripped).split())


def _find_subject(sentence: str, subject: str) -> tuple[int, int]:
    """(start, end) of the first whole-word, case-insensitive mention of `subject`; (-1, -1) if none.

    A leading "the" on either side is optional: subject "The Eiffel Tower" matches "Eiffel Tower is…".
    """
    variants = [subject]
    lowered = subject.lower()
    if lowered.startswith("the ") and len(subject) > 4:
        variants.append(subject[4:])
    for variant in variants:
        pattern = r"(?<!\w)" + r"\s+".join(re.escape(p) for p in variant.split()) + r"(?!\w)"
        match = re.search(pattern, sentence, flags=re.IGNORECASE)
        if match:
            return match.start(), match.end()
    return -1, -1


def _words_after(fact: str, subject_end: int) -> list[_Word]:
    return [
        _Word(m.start(), m.end(), m.group())
        for m in re.finditer(r"\S+", fact)
        if m.start() >= subject_end and m.start() > 0 and fact[m.start() - 1] == " "
    ]


def _clean_target(target: str) -> str:
    """The object without final punctuation or wrapping quotes ("Rome." → "Rome", "U.S." stays)."""
    previous = None
    while target != previous:
        previous = target
        target = _strip_quotes(target.strip())
        if target and target[-1] in _FINAL_PUNCT and not _INITIALS_RE.search(target):
            target = target[:-1]
    return target


def _strip_quotes(text: str) -> str:
    while len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


AGREES = -0.5  # a word within this log-prob of the model's top choice is what the model would say
GapsFn = Callable[[str, Sequence[int]], Sequence[float]]
"""``gaps(fact, offsets)``: for each word start, log P(its first token) - log P(the model's top token)."""


def follow_model(text: str, parsed: ParsedEdit, gaps: GapsFn) -> ParsedEdit:
    """Move the split of an arrow-form edit right past the words the model itself would say there.

    The target then starts where the fact departs from what the model predicts ("plays for | the
    Chicago Bulls" becomes "plays for the | Chicago Bulls"). The explicit form is the user's choice
    and is returned unchanged.
    """
    if "|" in text and not any(arrow in text for arrow in ARROWS):
        return parsed
    start = len(parsed.prompt) + 1
    words = [m.start() for m in re.finditer(r"\S+", parsed.fact) if m.start() >= start]
    if len(words) < 2:
        return parsed
    split = start
    for index, gap in enumerate(gaps(parsed.fact, words[:-1])):
        if gap < AGREES:
            break
        split = words[index + 1]
    if split == start:
        return parsed
    target = parsed.fact[split:].rstrip(" .!?;:")
    return replace(parsed, prompt=parsed.fact[:split].rstrip(), target=target)
