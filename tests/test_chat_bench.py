"""The chat mode of the benchmark on the scripted service (its edits act on questions naming the
subject), single and sequential; the targets table; the CLI flag."""

from __future__ import annotations

import json

import pytest

from kbchat import cli
from kbchat.errors import EditFailed, KbchatError
from kbchat.evaluation.answer_fluency import AnswerNLL, answer_nll, fact_spans
from kbchat.evaluation.chat import CaseQuestions, UneditedAnswers, names_subject, run_chat_bench
from kbchat.evaluation.datasets import load_cases
from kbchat.evaluation.tables import chat_verdicts, format_chat_table
from tests.fake_service import FakeChatService
from tests.test_bench import FLAT


def flat_file(tmp_path):
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(FLAT))
    return path


def constant_fluency(question: str, answer: str, facts=(), limit=None, context=None) -> AnswerNLL:
    return AnswerNLL(2.0 if context is None else 1.0, 2, 3)


@pytest.mark.parametrize("sequential", [False, True])
def test_chat_bench_scores_and_reverts_every_edit(tmp_path, sequential):
    fake = FakeChatService()
    cases = load_cases(flat_file(tmp_path))
    result = run_chat_bench(fake, cases, "serac", constant_fluency, sequential=sequential)
    figures = result["figures"]
    assert figures["reliability"] == {"rate": 1.0, "n": 2}  # the fake answers "<prompt> <target>."
    assert figures["canaries_unchanged"]["rate"] == 1.0 and figures["canaries_unchanged"]["n"] == 4
    assert figures["reliability[location]"]["n"] == 1 and figures["nll_edited"]["nll"] == 1.0
    assert figures["nll_told_edited"]["nll"] == 0.5  # the judge told the answer's fact
    assert figures["nll_told_unquoted_unedited"]["nll"] == 0.5  # the plain unedited answers, judged told
    assert {"entropy_edited", "distinct3_unedited", "subject_intact_edited"} <= set(figures)
    assert [e.status for e in fake.edits()] == ["reverted", "reverted"]
    assert [row["relation"] for row in result["per_case"]] == ["location", "other"]  # a wording no relation lists
    assert result["per_case"][0]["edit"] == "Eiffel Tower → The Eiffel Tower is located in Rome"
    told = [c for c in fake.calls if c[0] == "ask" and c[2] and c[2][0]["role"] == "system"]
    assert '"The Eiffel Tower is located in Paris."' in told[0][2][0]["content"]  # the told baseline: the true fact
    assert set(result["per_case"][0]["before_told"]) == set(CaseQuestions.of(cases[0], []).asks)
    if sequential:  # all edits were made before any question was asked after them
        kinds = [c[0] for c in fake.calls if c[0] in ("edit", "ask")]
        first_after = kinds.index("edit")
        assert kinds[first_after:first_after + 2] == ["edit", "edit"]


class RefusingService(FakeChatService):
    """Refuses (EditFailed) every edit of the Eiffel Tower, as a learned editor refuses one it cannot carry."""

    def edit(self, text: str, **kwargs):
        if text.startswith("Eiffel Tower"):
            self.calls.append(("refused", text))
            raise EditFailed("mend could not carry the edit: nothing was changed")
        return super().edit(text, **kwargs)


@pytest.mark.parametrize("sequential", [False, True])
def test_a_refused_edit_is_asked_unedited_and_scored_as_a_miss(tmp_path, sequential):
    fake = RefusingService()
    cases = load_cases(flat_file(tmp_path))
    figures = (result := run_chat_bench(fake, cases, "mend", constant_fluency, sequential=sequential))["figures"]
    assert figures["refused"] == {"rate": 0.5, "n": 2}
    assert figures["reliability"] == {"rate": 0.5, "n": 2}  # the refused case counts, as a miss
    refused, made = result["per_case"]
    assert "could not carry" in refused["refused"] and refused["parsed"] is None
    question = CaseQuestions.of(cases[0], []).asks[0]
    assert refused["after"][question] == refused["before"][question]
    assert "refused" not in made and [e.status for e in fake.edits()] == ["reverted"]


def test_targets_table_says_what_misses():
    figures = {"reliability": {"rate": 0.9, "n": 10}, "other_wordings": {"rate": 0.9, "n": 20},
               "subject_intact_edited": {"rate": 0.8, "n": 5}, "subject_intact_unedited": {"rate": 0.9, "n": 5},
               "distinct3_edited": {"mean": 0.9, "n": 10}, "distinct3_unedited": {"mean": 0.95, "n": 10},
               "entropy_edited": {"mean": 2.0, "n": 10}, "entropy_unedited": {"mean": 4.0, "n": 10},
               "nll_edited": {"nll": 2.3, "n": 10}, "nll_unedited": {"nll": 2.0, "n": 10},
               "nll_whole_edited": {"nll": 4.0, "n": 10}, "nll_whole_unedited": {"nll": 2.0, "n": 10},
               "nll_told_edited": {"nll": 2.1, "n": 10}, "nll_told_unedited": {"nll": 2.0, "n": 10},
               "nll_told_unquoted_edited": {"nll": 2.5, "n": 10}, "nll_told_unquoted_unedited": {"nll": 2.0, "n": 10}}
    verdicts = {name: met for name, _, _, met in chat_verdicts(figures)}
    assert verdicts["reliability"] is False and verdicts["other_wordings"] is True
    assert verdicts["follow_up"] is None  # not measured: neither met nor missed
    assert verdicts["subject_intact"] is False and verdicts["fluency (distinct 3-grams)"] is True
    assert verdicts["n-gram entropy"] is None  # shown, not judged
    assert verdicts["fluency (unedited model's NLL per token, same length, the fact's words not charged)"] is False  # 2.3 > 1.1 × 2.0
    assert verdicts["fluency (the same NLL, the judge told the fact each answer assumes)"] is True  # 2.1 ≤ 2.2
    assert verdicts["fluency (the same, told; both sides' answers written without the quote)"] is False  # 2.5 > 2.2
    assert verdicts["NLL per token of the whole answers"] is None
    table = format_chat_table({"method": "serac", "cases": 10, "figures": figures})
    assert "| reliability | 90.0 | ≥ 95% | NO |" in table


def test_names_subject():
    assert names_subject("Bernard Giraudeow is Polish", "Bernard Giraudeau") is False
    assert names_subject("Bernard Giraudeau is Polish", "Bernard Giraudeau") is True
    assert names_subject("He is Polish", "Bernard Giraudeau") is None


def test_cli_chat_bench_needs_the_local_engine(tmp_path):
    with pytest.raises(KbchatError, match="without --server"):
        cli.run(["bench", "--chat", "--data", str(flat_file(tmp_path)), "--method", "serac"],
                open_chat=lambda **_: FakeChatService())


def test_distinct_ngrams():
    from kbchat.evaluation.metrics import distinct_ngrams

    assert distinct_ngrams("Galata is located in Naples, Italy.") == 1.0
    assert distinct_ngrams("Sega, SegaMBA, SegaMBA, SegaMBA, SegaMBA, SegaMBA") < 0.5
    assert distinct_ngrams("Rome") == 1.0


def test_resumed_run_asks_only_the_cases_left_and_scores_all(tmp_path):
    cases = load_cases(flat_file(tmp_path))
    whole = run_chat_bench(FakeChatService(), cases, "serac", constant_fluency)
    saved = []
    run_chat_bench(FakeChatService(), cases[:1], "serac", constant_fluency, partial=saved.append)
    fake = FakeChatService()
    resumed = run_chat_bench(fake, cases, "serac", constant_fluency, done=saved[-1]["per_case"])
    assert resumed["figures"] == whole["figures"] and resumed["per_case"] == whole["per_case"]
    assert [e.subject for e in fake.edits()] == [cases[1].request.subject]  # the first case was not redone
    stale = [{**saved[-1]["per_case"][0], "after": {}}]  # a row missing answers this case asks is redone
    fake = FakeChatService()
    run_chat_bench(fake, cases, "serac", constant_fluency, done=stale)
    assert len(fake.edits()) == 2


def test_shards_ask_their_own_cases_and_merge_into_the_whole_run(tmp_path):
    cases = load_cases(flat_file(tmp_path))
    whole = run_chat_bench(FakeChatService(), cases, "serac", constant_fluency)
    shards = []
    for k in (0, 1):
        fake = FakeChatService()
        shards.append(run_chat_bench(fake, cases, "serac", constant_fluency, shard=(k, 2)))
        assert [e.subject for e in fake.edits()] == [cases[k].request.subject]
    fake = FakeChatService()
    merged = run_chat_bench(fake, cases, "serac", constant_fluency,
                            done=[*shards[1]["per_case"], *shards[0]["per_case"]])
    assert not fake.edits() and merged["per_case"] == whole["per_case"] and merged["figures"] == whole["figures"]


def test_methods_sharing_unedited_answers_ask_each_question_once(tmp_path):
    cases = load_cases(flat_file(tmp_path))
    fake = FakeChatService()
    answered = UneditedAnswers()
    first = run_chat_bench(fake, cases, "serac", constant_fluency, answered=answered)
    asked = sum(c[0] == "ask" for c in fake.calls)
    second = run_chat_bench(fake, cases, "ike", constant_fluency, answered=answered)
    asked_again = sum(c[0] == "ask" for c in fake.calls) - asked
    unedited = {q for row in first["per_case"] for q in row["before"]}
    told = sum(len(row["before_told"]) for row in first["per_case"])
    assert unedited and told
    assert asked_again == asked - len(unedited) - told  # only the answers after each edit were asked again
    for key in ("before", "before_told"):
        assert [row[key] for row in second["per_case"]] == [row[key] for row in first["per_case"]]


def test_an_earlier_runs_file_lends_its_unedited_answers(tmp_path, monkeypatch):
    from bench import chat_bench

    data = flat_file(tmp_path)
    cases = load_cases(data)
    run = run_chat_bench(FakeChatService(), cases, "rome", constant_fluency)
    (earlier := tmp_path / "rome.json").write_text(json.dumps(run | {"data": f"/elsewhere/{data.name}"}))
    args = chat_bench.arguments().parse_args(["--data", str(data), "--unedited", str(earlier)])
    answered = chat_bench.lent(args, "SmolLM2")
    fresh, lending = FakeChatService(), FakeChatService()
    run_chat_bench(fresh, cases, "serac", constant_fluency)
    again = run_chat_bench(lending, cases, "serac", constant_fluency, answered=answered)
    unedited = len({q for row in run["per_case"] for q in row["before"]}) + \
        sum(len(row["before_told"]) for row in run["per_case"])
    assert sum(c[0] == "ask" for c in lending.calls) == sum(c[0] == "ask" for c in fresh.calls) - unedited
    assert [row["before_told"] for row in again["per_case"]] == [row["before_told"] for row in run["per_case"]]
    (other := tmp_path / "other.json").write_text(json.dumps(run | {"data": "zsre.json"}))
    (gemma := tmp_path / "gemma.json").write_text(json.dumps(run | {"data": str(data), "model": "gemma"}))
    for wrong in (other, gemma):
        args = chat_bench.arguments().parse_args(["--data", str(data), "--unedited", str(wrong)])
        with pytest.raises(SystemExit, match="other data or another model"):
            chat_bench.lent(args, "SmolLM2")


def test_with_typo_swaps_two_letters_of_the_longest_word_never_the_first():
    from kbchat.evaluation.chat import with_typo

    assert with_typo("Kuala Langat") == "Kuala Lagnat"
    assert with_typo("Eiffel Tower") == "Efifel Tower"  # the middle pair "ff" would change nothing
    assert with_typo("BBC One") == "BBC One" and with_typo("AT&T") == "AT&T"  # no word to misspell
    assert sorted(with_typo("Jaidev")) == sorted("Jaidev") and with_typo("Jaidev")[0] == "J"


def test_lower_case_and_typo_questions_count_as_other_wordings(tmp_path):
    cases = load_cases(flat_file(tmp_path))
    result = run_chat_bench(FakeChatService(), cases, "serac", constant_fluency)
    first = result["per_case"][0]["after"]
    assert "where is the eiffel tower?" in first and "Where is the Efifel Tower?" in first
    figures = result["figures"]
    parts = {k: v["n"] for k, v in figures.items() if k.startswith("other_wordings[")}
    assert parts["other_wordings[lower case]"] == 2 and parts["other_wordings[typo]"] == 2
    assert figures["other_wordings"]["n"] == sum(parts.values())
    table = format_chat_table(result)
    assert "| · typo |" in table and "| · lower case |" in table


def test_fact_spans_are_whole_words_in_order():
    answer = "Rome is in Italy; the Roman forum is in rome, not Paris."
    assert fact_spans(answer, ["Rome", "Paris", "Berlin"]) == [(0, 4), (40, 44), (50, 55)]
    assert fact_spans("New York and York", ["York", "New York"]) == [(0, 8), (13, 17)]  # overlap: longer kept
    assert fact_spans("anything", ["", " "]) == []


def test_answer_nll_leaves_the_facts_tokens_out(tiny_engine):
    """The fact's NLL is subtracted by the chain rule: what is left is the NLL of the other tokens,
    each given everything before it, so it does not depend on how surprising the fact itself is."""
    fluency = answer_nll(tiny_engine.runtime)
    question, answer = "Where is the Eiffel Tower?", "The Eiffel Tower is in Rome, a city."
    whole = fluency(question, answer, (), None)
    masked = fluency(question, answer, ["Rome"], None)
    assert masked.tokens == whole.tokens - 1 and masked.nll < whole.nll and masked.length == whole.length
    other = fluency(question, answer.replace("Rome", "Oslo"), ["Oslo"], None)
    assert other.nll != masked.nll  # the tokens after the fact are still scored, given it
    cut = fluency(question, answer, ["Rome"], 4)  # " The Eiffel Tower is": the fact is past the cut
    assert cut.tokens == 4 and cut.length == whole.length and 0 < cut.nll < masked.nll
    assert fluency(question, "  ", ["Rome"], None) == AnswerNLL(0.0, 0, 0)


def test_told_fluency_judges_each_side_told_its_own_fact(tmp_path):
    """The told figure: the edited answer judged told the new fact, the baseline told the true one."""
    seen = []

    def recording(question, answer, facts=(), limit=None, context=None):
        seen.append(context)
        return AnswerNLL(2.0, 2, 3)

    cases = load_cases(flat_file(tmp_path))
    run_chat_bench(FakeChatService(), cases[:1], "serac", recording)
    told = [c for c in seen if c]
    assert any('"The Eiffel Tower is located in Rome."' in c for c in told)
    assert any('"The Eiffel Tower is located in Paris."' in c for c in told)
