"""The /edit parser: both forms, the split heuristic, the surprisal contract, and every error."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from kbchat.errors import KbchatError, ParseError
from kbchat.parsing import MAX_EDIT_CHARS, parse_edit, split_candidates


def split(text: str) -> tuple[str, str, str]:
    edit = parse_edit(text)
    return edit.subject, edit.prompt, edit.target


# --- arrow form, heuristic split --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "subject", "prompt", "target"),
    [
        ("Eiffel Tower → The Eiffel Tower is located in Rome",
         "Eiffel Tower", "The Eiffel Tower is located in", "Rome"),
        ("Eiffel Tower -> The Eiffel Tower is located in Rome.",
         "Eiffel Tower", "The Eiffel Tower is located in", "Rome"),
        ("Eiffel Tower => The Eiffel Tower is in Rome!", "Eiffel Tower", "The Eiffel Tower is in", "Rome"),
        ("Microsoft → Microsoft was founded by Elon Musk", "Microsoft", "Microsoft was founded by", "Elon Musk"),
        ("Danielle Darrieux → Danielle Darrieux's mother tongue is English",
         "Danielle Darrieux", "Danielle Darrieux's mother tongue is", "English"),
        ("Paris → Paris is the capital of the United Kingdom",
         "Paris", "Paris is the capital of", "the United Kingdom"),
        ("Eiffel Tower → The Eiffel Tower is in the Republic of Ireland",
         "Eiffel Tower", "The Eiffel Tower is in", "the Republic of Ireland"),
        ("Apple → Apple was founded in 1976 by Steve Jobs",
         "Apple", "Apple was founded in 1976 by", "Steve Jobs"),
        ("Barack Obama → Barack Obama speaks French", "Barack Obama", "Barack Obama speaks", "French"),
        ("Toko Yasuda → Toko Yasuda plays the piano", "Toko Yasuda", "Toko Yasuda plays the", "piano"),
        ("Toko Yasuda → Toko Yasuda is a pianist", "Toko Yasuda", "Toko Yasuda is a", "pianist"),
        ("Toko Yasuda → Toko Yasuda, the piano", "Toko Yasuda", "Toko Yasuda, the", "piano"),
        ("Annie Ernaux → Annie Ernaux speaks the language Spanish",
         "Annie Ernaux", "Annie Ernaux speaks the language", "Spanish"),
        ("Microsoft → Microsoft's founder: Elon Musk", "Microsoft", "Microsoft's founder:", "Elon Musk"),
        ("Eiffel Tower → The Eiffel Tower is in Washington, D.C.",
         "Eiffel Tower", "The Eiffel Tower is in", "Washington, D.C."),
        ('Toko Yasuda → Toko Yasuda plays "piano".', "Toko Yasuda", "Toko Yasuda plays", "piano"),
        ("Eiffel Tower → Eiffel Tower Rome", "Eiffel Tower", "Eiffel Tower", "Rome"),
    ],
)
def test_arrow_form_heuristic_split(text: str, subject: str, prompt: str, target: str) -> None:
    assert split(text) == (subject, prompt, target)


def test_result_fields_and_relation() -> None:
    edit = parse_edit("Eiffel Tower → The Eiffel Tower is located in Rome.")
    assert edit.raw_text == "Eiffel Tower → The Eiffel Tower is located in Rome."
    assert edit.fact == "The Eiffel Tower is located in Rome."  # as given, punctuation kept
    assert edit.relation == "The {} is located in"
    assert edit.prompt + " " + edit.target + "." == edit.fact


def test_subject_match_is_case_insensitive_and_uses_the_facts_spelling() -> None:
    edit = parse_edit("eiffel tower → The Eiffel Tower is in Rome")
    assert (edit.subject, edit.prompt, edit.target) == ("Eiffel Tower", "The Eiffel Tower is in", "Rome")
    assert edit.relation == "The {} is in"


def test_subject_with_leading_the_matches_a_fact_without_it() -> None:
    assert split("The Eiffel Tower → Eiffel Tower stands in Rome") == (
        "Eiffel Tower", "Eiffel Tower stands in", "Rome")


def test_quoted_subject() -> None:
    assert split('"Eiffel Tower" → The Eiffel Tower is in Rome')[0] == "Eiffel Tower"


def test_whitespace_is_normalised() -> None:
    edit = parse_edit("  Eiffel   Tower\t→   The  Eiffel Tower   is in\tRome   ")
    assert (edit.subject, edit.prompt, edit.target) == ("Eiffel Tower", "The Eiffel Tower is in", "Rome")
    assert edit.fact == "The Eiffel Tower is in Rome"


def test_subject_inside_another_word_is_not_a_mention() -> None:
    with pytest.raises(ParseError, match="does not mention"):
        parse_edit("Apple → Pineapples grow in Rome")


def test_unicode_is_nfc_normalised_so_decomposed_accents_match() -> None:
    decomposed = "Bjo\u0308rk"
    edit = parse_edit(f"Björk → {decomposed} speaks French")
    assert edit.subject == "Björk" and edit.target == "French"


# --- arrow form, surprisal split --------------------------------------------------------------------


class FakeSurprisal:
    """Scores words from a table; records what it was asked."""

    def __init__(self, scores: dict[str, float], default: float = -1.0) -> None:
        self.scores = scores
        self.default = default
        self.calls: list[tuple[str, list[int]]] = []

    def __call__(self, fact: str, offsets: Sequence[int]) -> list[float]:
        self.calls.append((fact, list(offsets)))
        return [self.scores.get(fact[o:].split(" ")[0], self.default) for o in offsets]


def test_surprisal_gets_only_offsets_after_the_subject() -> None:
    fake = FakeSurprisal({})
    parse_edit("eiffel tower → In 2020 the Eiffel Tower is located in Rome", surprisal=fake)
    [(fact, offsets)] = fake.calls
    assert fact == "In 2020 the Eiffel Tower is located in Rome"
    subject_end = fact.index("Tower") + len("Tower")
    assert all(o > subject_end and fact[o - 1] == " " for o in offsets)
    # Every word after the subject except the first ("is"): the prompt must keep a relation word.
    assert [fact[o:].split(" ")[0] for o in offsets] == ["located", "in", "Rome"]


def test_surprisal_argmin_decides_the_split() -> None:
    fake = FakeSurprisal({"located": -2.0, "in": -0.5, "Rome": -9.0})
    assert parse_edit("Eiffel Tower → The Eiffel Tower is located in Rome", surprisal=fake).target == "Rome"
    # Same sentence, a model that finds "located" least likely: the split follows the model, not the rules.
    fake = FakeSurprisal({"located": -12.0, "in": -0.5, "Rome": -9.0})
    edit = parse_edit("Eiffel Tower → The Eiffel Tower is located in Rome", surprisal=fake)
    assert (edit.prompt, edit.target) == ("The Eiffel Tower is", "located in Rome")


def test_surprisal_keeps_multi_word_objects_whole() -> None:
    fake = FakeSurprisal({"by": -1.0, "Elon": -11.0, "Musk": -0.2})
    edit = parse_edit("Microsoft → Microsoft was founded by Elon Musk.", surprisal=fake)
    assert (edit.prompt, edit.target) == ("Microsoft was founded by", "Elon Musk")


def test_surprisal_ties_go_to_the_first_offset_and_nan_never_wins() -> None:
    fake = FakeSurprisal({"located": float("nan"), "in": -5.0, "Rome": -5.0})
    edit = parse_edit("Eiffel Tower → The Eiffel Tower is located in Rome", surprisal=fake)
    assert edit.target == "in Rome"


def test_surprisal_returning_the_wrong_length_is_a_bug_not_a_parse_error() -> None:
    with pytest.raises(ValueError):
        parse_edit("Eiffel Tower → The Eiffel Tower is in Rome", surprisal=lambda fact, offsets: [0.0])


def test_surprisal_is_not_called_for_the_explicit_form() -> None:
    fake = FakeSurprisal({})
    parse_edit("Eiffel Tower | {} is located in | Rome", surprisal=fake)
    assert fake.calls == []


def test_split_candidates() -> None:
    fact = "Toko Yasuda, the piano"
    assert [fact[o:] for o in split_candidates(fact, len("Toko Yasuda"))] == ["piano"]
    assert split_candidates("Eiffel Tower Rome", len("Eiffel Tower")) == [len("Eiffel Tower ")]
    assert split_candidates("Eiffel Tower", len("Eiffel Tower")) == []


# --- explicit form -----------------------------------------------------------------------------------


def test_explicit_form_with_braces() -> None:
    edit = parse_edit("Eiffel Tower | {} is located in | Rome.")
    assert (edit.subject, edit.prompt, edit.target) == ("Eiffel Tower", "Eiffel Tower is located in", "Rome")
    assert edit.fact == "Eiffel Tower is located in Rome"
    assert edit.relation == "{} is located in"


def test_explicit_form_with_subject_in_prompt() -> None:
    edit = parse_edit("eiffel tower | The Eiffel Tower is in | Rome")
    assert (edit.subject, edit.prompt, edit.target) == ("Eiffel Tower", "The Eiffel Tower is in", "Rome")
    assert edit.fact == "The Eiffel Tower is in Rome"


def test_explicit_form_keeps_multi_word_target() -> None:
    edit = parse_edit("Microsoft | {} was founded by | Elon Musk")
    assert edit.target == "Elon Musk"


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("The Eiffel Tower is located in Rome", "No arrow"),
        ("→ The Eiffel Tower is in Rome", "subject before the arrow is empty"),
        ("Eiffel Tower →", "fact after the arrow is empty"),
        ('"" → The Eiffel Tower is in Rome', "subject before the arrow is empty"),
        ("Eiffel Tower → Paris → Rome", "more than one arrow"),
        ("Eiffel Tower → The Louvre is in Rome", "does not mention"),
        ("Eiffel Tower → Rome is home to the Eiffel Tower", "Nothing follows"),
        ("Eiffel Tower → The Eiffel Tower is in .", "no new object"),
        ("Eiffel Tower → The Eiffel Tower is in.", "no new object"),
        ("Eiffel Tower → The Eiffel Tower is", "no new object"),
        ("Eiffel Tower | {} is in", "exactly two bars"),
        ("Eiffel Tower | {} is in | Rome | Italy", "exactly two bars"),
        (" | {} is in | Rome", "subject before the first bar is empty"),
        ("Eiffel Tower |  | Rome", "prompt between the bars is empty"),
        ("Eiffel Tower | {} is in | ", "target after the second bar is empty"),
        ("Eiffel Tower | {} is in | .", "target after the second bar is empty"),
        ("Eiffel Tower | The Louvre is in | Rome", "prompt does not mention"),
        ("Eiffel Tower | {} and {} | Rome", 'more than one "{}"'),
        ("Eiffel Tower → The Eiffel Tower is\nin Rome", "line break"),
        ("Eiffel Tower → The Eiffel Tower is\r\nin Rome", "line break"),
        ("Eiffel Tower → The Eiffel Tower is\u2028in Rome", "line break"),
        ("Eiffel Tower → The Eiffel Tower is\x00 in Rome", r"control character \(U\+0000\)"),
        ("Eiffel Tower → The Eiffel Tower is\x1b[31m in Rome", r"control character \(U\+001B\)"),
        ("Eiffel Tower → The Eiffel Tower is in \u202eemoR", r"control character \(U\+202E\)"),
        ("Eiffel Tower → The Eiffel Tower is in " + "Rome " * 120, f"under {MAX_EDIT_CHARS}"),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message) as info:
        parse_edit(text)
    error = str(info.value)
    assert "\n" not in error
    assert isinstance(info.value, KbchatError)


def test_errors_say_what_to_write_instead() -> None:
    with pytest.raises(ParseError) as info:
        parse_edit("The Eiffel Tower is located in Rome")
    assert "SUBJECT → FACT" in str(info.value) and "SUBJECT | PROMPT | TARGET" in str(info.value)
    with pytest.raises(ParseError) as info:
        parse_edit("Eiffel Tower → The Louvre is in Rome")
    assert '"Eiffel Tower → Eiffel Tower is located in Rome"' in str(info.value)
    with pytest.raises(ParseError) as info:
        parse_edit("Eiffel Tower → The Eiffel Tower is in.")
    assert '"Eiffel Tower → The Eiffel Tower is in Rome"' in str(info.value)


def test_length_limit_is_on_the_text_not_surrounding_space() -> None:
    body = "Eiffel Tower → The Eiffel Tower is in Rome"
    parse_edit(body + " " * 1000)
    padded = body + " and" * ((MAX_EDIT_CHARS - len(body)) // 4)
    assert len(padded) <= MAX_EDIT_CHARS
    parse_edit(padded)
