"""Per-edit checks against a scripted view whose answers before and after the edit are known."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from kbchat.audit import EditView, Probe, parse_user_probe, plan_probes, run_checks
from kbchat.audit.checks import GENERATION, TEACHER_FORCED, entropy_of
from kbchat.audit.probes import (
    FLUENCY,
    GENERALIZATION,
    LOCALITY,
    METRICS,
    PORTABILITY,
    QUESTION,
    RELIABILITY,
    Canaries,
    Fact,
    load_canaries,
    locality_probes,
)
from kbchat.evaluation.metrics import mentions
from kbchat.records import CheckRecord
from methods.requests import EditRequest

REQUEST = EditRequest("Eiffel Tower", "The {} is located in", "Rome", target_true="Paris")
CANARIES = Canaries(
    fixed=(
        Fact("capital", "France", "The capital of France is", "What is the capital of France?", "Paris"),
        Fact("author", "Romeo and Juliet", "Romeo and Juliet was written by", "Who wrote Romeo and Juliet?",
             "Shakespeare"),
        Fact("capital", "Japan", "The capital of Japan is", "What is the capital of Japan?", "Tokyo"),
    ),
    neighbours=(
        Fact("location", "Eiffel Tower", "The Eiffel Tower is located in", "Where is the Eiffel Tower?", "Paris"),
        Fact("location", "Colosseum", "The Colosseum is located in", "Where is the Colosseum?", "Rome"),
        Fact("location", "Big Ben", "Big Ben is located in", "Where is Big Ben?", "London"),
        Fact("location", "Kremlin", "The Kremlin is located in", "Where is the Kremlin?", "Moscow"),
        Fact("location", "Louvre", "The Louvre is located in", "Where is the Louvre?", "Paris"),
        Fact("author", "Hamlet", "Hamlet was written by", "Who wrote Hamlet?", "Shakespeare"),
    ),
)
VARIED = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. It was designed "
          "by Gustave Eiffel's company and built for the 1889 World's Fair.")
UNKNOWN = "I am not sure."


class ScriptedView:
    """An EditView whose answers are scripted per probe text.

    `answers` holds what the system says before the edit, `edited` what changes with it (everything
    else stays the same). Teacher forcing agrees with the script: an expected answer that the scripted
    answer mentions scores log P = -0.2 and token accuracy 1, any other -6 and 0 (unless `logprobs`
    scripts the pair).
    """

    def __init__(self, request: EditRequest, answers: Mapping[str, str], edited: Mapping[str, str] = (),
                 logprobs: Mapping[tuple[str, str, bool], float] | None = None) -> None:
        self.request = request
        self.before = dict(answers)  # what the system says before the edit
        self.edited = dict(edited)
        self.scripted_logprobs = dict(logprobs or {})
        self.calls: list[tuple[str, str, bool]] = []

    def _say(self, text: str, edited: bool) -> str:
        if edited and text in self.edited:
            return self.edited[text]
        return self.before.get(text, UNKNOWN)

    def generate(self, question: str, *, edited: bool) -> str:
        self.calls.append(("generate", question, edited))
        return self._say(question, edited)

    def complete(self, prompt: str, *, edited: bool) -> str:
        self.calls.append(("complete", prompt, edited))
        return " " + self._say(prompt, edited)

    def answers(self, requests: Sequence[tuple[str, str]], *, edited: bool) -> list[str]:
        self.calls.append(("answers", f"{len(requests)} requests", edited))
        return [self.generate(text, edited=edited) if kind == QUESTION else self.complete(text, edited=edited)
                for kind, text in requests]

    def logprobs(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]:
        self.calls.append(("logprobs", f"{len(pairs)} pairs", edited))
        return [self.scripted_logprobs.get((p, t, edited), -0.2 if mentions(self._say(p, edited), t) else -6.0)
                for p, t in pairs]

    def token_accuracies(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]:
        self.calls.append(("token_accuracies", f"{len(pairs)} pairs", edited))
        return [1.0 if mentions(self._say(p, edited), t) else 0.0 for p, t in pairs]


def world(probes: Sequence[Probe]) -> dict[str, str]:
    """The answers before the edit: every probe about the edited fact says Paris, every fact its answer."""
    answers = {}
    for probe in probes:
        texts = [probe.text, probe.cloze] if probe.cloze else [probe.text]
        for text in texts:
            if probe.metric == FLUENCY:
                answers[text] = VARIED
            elif probe.metric in (RELIABILITY, GENERALIZATION):
                answers[text] = "Paris."
            else:
                answers[text] = f"{probe.expected}."
    return answers


def edit_works(probes: Sequence[Probe], metrics: Sequence[str] = (RELIABILITY, GENERALIZATION)) -> dict[str, str]:
    """After a working edit: the probes of `metrics` give their expected answer (Rome for the edit)."""
    out = {}
    for probe in probes:
        if probe.metric in metrics:
            out[probe.text] = f"It is in {probe.expected}."
            if probe.cloze:
                out[probe.cloze] = f"{probe.expected}."
    return out


def by(checks: Sequence[CheckRecord], metric: str, mode: str | None = None) -> list[CheckRecord]:
    return [c for c in checks if c.metric == metric and (mode is None or c.mode == mode)]


@pytest.fixture
def probes() -> list[Probe]:
    return plan_probes(REQUEST, user_probes=["Which country is the Eiffel Tower in? → Italy"], canaries=CANARIES)


# ------------------------------------------------------------------------------------------------
# Planning


def test_plan_covers_every_metric_with_known_probes(probes):
    assert {p.metric for p in probes} == set(METRICS)
    reliability = by_probe(probes, RELIABILITY)
    assert [(p.text, p.kind, p.expected, p.old) for p in reliability] == [
        ("The Eiffel Tower is located in", "prompt", "Rome", "Paris"),
        ("Where is the Eiffel Tower?", "question", "Rome", "Paris"),
    ]
    assert len(by_probe(probes, GENERALIZATION)) == 2
    assert all(p.expected == "Rome" and p.old == "Paris" for p in by_probe(probes, GENERALIZATION))
    [fluency] = by_probe(probes, FLUENCY)
    assert fluency.text == "Tell me about Eiffel Tower." and fluency.kind == QUESTION


def by_probe(probes: Sequence[Probe], metric: str) -> list[Probe]:
    return [p for p in probes if p.metric == metric]


def test_plan_includes_user_probes_and_paraphrases():
    planned = plan_probes(
        REQUEST,
        user_probes=["Which country is the Eiffel Tower in? → Italy", "What city do you see from the tower?",
                     "The tower's city is -> Rome", "  "],
        paraphrases=["People visit the Eiffel Tower in"],
        canaries=CANARIES,
    )
    portability = [(p.text, p.expected, p.kind) for p in by_probe(planned, PORTABILITY)]
    assert portability == [
        ("Which country is the Eiffel Tower in?", "Italy", "question"),
        ("What city do you see from the tower?", "Rome", "question"),  # no arrow: the target is expected
        ("The tower's city is", "Rome", "prompt"),
    ]
    generalization = [p.text for p in by_probe(planned, GENERALIZATION)]
    assert len(generalization) == 3 and generalization[-1] == "People visit the Eiffel Tower in"


def test_locality_has_canaries_and_two_neighbours_of_other_subjects():
    planned = locality_probes(REQUEST, CANARIES)
    subjects = [p.cloze for p in planned]
    assert subjects == [
        "The capital of France is", "Romeo and Juliet was written by", "The capital of Japan is",
        # Not the edit's own subject; the one whose answer is the replaced Paris first, then others in
        # file order, the Colosseum (whose answer is the new target, Rome) last.
        "The Louvre is located in", "Big Ben is located in",
    ]
    wider = locality_probes(REQUEST, CANARIES, neighbours=5)
    assert [p.expected for p in wider[3:]] == ["Paris", "London", "Moscow", "Rome"]
    assert all(p.metric == LOCALITY and p.kind == QUESTION and p.old is None for p in planned)


def test_locality_skips_canaries_about_the_edited_subject():
    edit = EditRequest("France", "The capital of {} is", "Lyon", target_true="Paris")
    planned = locality_probes(edit, CANARIES)
    assert "The capital of France is" not in [p.cloze for p in planned]
    # capital has no neighbour list here; the other canaries remain
    assert [p.expected for p in planned] == ["Shakespeare", "Tokyo"]


def test_unrecognised_relation_gets_only_the_fixed_canaries():
    edit = EditRequest("Zorblax", "{} likes to eat", "apples")
    assert len(locality_probes(edit, CANARIES)) == len(CANARIES.fixed)


def test_user_probe_parsing():
    assert parse_user_probe("Where is it? => Rome", "X") == Probe(PORTABILITY, "Where is it?", "Rome", kind=QUESTION)
    assert parse_user_probe("It is in", "Rome").expected == "Rome"
    with pytest.raises(ValueError, match="no question"):
        parse_user_probe("→ Rome", "Rome")


def test_probe_validation():
    with pytest.raises(ValueError, match="unknown metric"):
        Probe("speed", "q", "a")
    with pytest.raises(ValueError, match="no expected answer"):
        Probe(RELIABILITY, "q", " ")
    assert Probe(FLUENCY, "Tell me.", "").expected == ""


def test_shipped_canaries_are_well_formed():
    canaries = load_canaries()
    assert 10 <= len(canaries.fixed) <= 16
    for fact in canaries.fixed + canaries.neighbours:
        assert fact.question.endswith("?") and fact.answer and fact.subject
        assert fact.subject.casefold() in (fact.prompt + fact.question).casefold()
    planned = plan_probes(REQUEST)
    assert len(by_probe(planned, LOCALITY)) == len(canaries.fixed) + 2


def test_malformed_canary_file_names_the_entry(tmp_path):
    path = tmp_path / "canaries.json"
    path.write_text('{"fixed": [{"relation": "capital", "subject": "France"}]}')
    with pytest.raises(ValueError, match=r"fixed\[0\]"):
        load_canaries(path)


# ------------------------------------------------------------------------------------------------
# Running


def test_an_edit_that_works_passes_everything(probes):
    view = ScriptedView(REQUEST, world(probes), edit_works(probes, (RELIABILITY, GENERALIZATION, PORTABILITY)))
    assert isinstance(view, EditView)
    checks = run_checks(view, probes)
    failed = [(c.metric, c.mode, c.probe) for c in checks if not c.passed]
    assert failed == []
    scored = [p for p in probes if p.metric != FLUENCY]
    assert len(checks) == 2 * len(scored) + 1
    assert {(c.metric, c.mode) for c in checks} >= {(m, mode) for m in METRICS if m != FLUENCY
                                                     for mode in (TEACHER_FORCED, GENERATION)}
    [tf] = [c for c in by(checks, RELIABILITY, TEACHER_FORCED) if c.probe == "The Eiffel Tower is located in"]
    assert tf.before == "P(Rome)=2.5e-03 P(Paris)=0.82 acc=0.00"
    assert tf.after == "P(Rome)=0.82 P(Paris)=2.5e-03 acc=1.00"
    assert tf.score == 1.0
    [gen] = [c for c in by(checks, RELIABILITY, GENERATION) if c.probe == "The Eiffel Tower is located in"]
    assert (gen.before, gen.after, gen.score) == (" Paris.", " It is in Rome.", 1.0)


def test_an_edit_that_changes_a_canary_fails_locality(probes):
    edited = edit_works(probes) | {"What is the capital of France?": "Rome.", "The capital of France is": "Rome."}
    checks = run_checks(ScriptedView(REQUEST, world(probes), edited), probes)
    failed = {(c.metric, c.mode, c.probe) for c in checks if not c.passed}
    assert failed == {
        (LOCALITY, TEACHER_FORCED, "The capital of France is"),
        (LOCALITY, GENERATION, "What is the capital of France?"),
    }
    [tf] = [c for c in by(checks, LOCALITY, TEACHER_FORCED) if c.probe == "The capital of France is"]
    assert tf.before == "P(Paris)=0.82 acc=1.00" and tf.after == "P(Paris)=2.5e-03 acc=0.00"
    assert tf.score == pytest.approx(2.5e-3 / 0.82, rel=1e-2)
    assert all(c.passed for c in by(checks, RELIABILITY) + by(checks, GENERALIZATION))


def test_the_target_leaking_into_an_unrelated_answer_fails_locality(probes):
    # The answer still names Tokyo, but now also the edit's target: a memory edit applied out of scope.
    edited = edit_works(probes) | {"What is the capital of Japan?": "The Eiffel Tower is in Rome. Tokyo."}
    checks = run_checks(ScriptedView(REQUEST, world(probes), edited), probes)
    [gen] = [c for c in by(checks, LOCALITY, GENERATION) if c.probe == "What is the capital of Japan?"]
    assert gen.passed is False
    assert [c for c in checks if not c.passed] == [gen]


def test_small_probability_shifts_keep_locality(probes):
    prompt = "The capital of Japan is"
    # Tokyo is no longer the argmax of the cloze, but its probability moved by less than the tolerance.
    scripted = {(prompt, "Tokyo", False): -0.2, (prompt, "Tokyo", True): -1.1}  # |Δ| = 0.9 < 1
    edited = edit_works(probes) | {prompt: "Kyoto."}
    view = ScriptedView(REQUEST, world(probes), edited, logprobs=scripted)
    [tf] = [c for c in run_checks(view, probes) if c.probe == prompt]
    assert (tf.before, tf.after) == ("P(Tokyo)=0.82 acc=1.00", "P(Tokyo)=0.33 acc=0.00")
    assert tf.passed is True and tf.score == pytest.approx(0.4066, abs=1e-3)
    view.scripted_logprobs[(prompt, "Tokyo", True)] = -1.3
    [tf] = [c for c in run_checks(view, probes) if c.probe == prompt]
    assert tf.passed is False


def test_an_edit_that_does_not_generalise_fails_generalization(probes):
    edited = edit_works(probes, (RELIABILITY,))
    paraphrases = [p.text for p in by_probe(probes, GENERALIZATION)]
    # Teacher forcing still prefers Paris on the paraphrases, and generation says Paris.
    checks = run_checks(ScriptedView(REQUEST, world(probes), edited), probes)
    failed = [(c.metric, c.mode) for c in checks if not c.passed]
    assert sorted(failed) == sorted([(GENERALIZATION, TEACHER_FORCED), (GENERALIZATION, GENERATION)] * 2)
    assert {c.probe for c in by(checks, GENERALIZATION)} == set(paraphrases)
    assert all(c.passed for c in by(checks, RELIABILITY))
    assert all(c.score == 0.0 for c in by(checks, GENERALIZATION))


def test_teacher_forced_pass_when_new_beats_old_without_full_accuracy():
    probe = Probe(RELIABILITY, "The Eiffel Tower is located in", "Rome", "Paris")
    scripted = {(probe.text, "Rome", True): -1.0, (probe.text, "Paris", True): -2.0}
    view = ScriptedView(REQUEST, {probe.text: "Paris."}, logprobs=scripted)  # generation still says Paris
    tf, gen = run_checks(view, [probe])
    assert (tf.mode, tf.passed, tf.score) == (TEACHER_FORCED, True, 0.0)
    assert (gen.mode, gen.passed) == (GENERATION, False)  # the mirage: forced success, no real one


def test_fluency_fails_on_repetitive_text(probes):
    edited = edit_works(probes) | {"Tell me about Eiffel Tower.": "Rome Rome Rome Rome Rome Rome Rome Rome Rome"}
    checks = run_checks(ScriptedView(REQUEST, world(probes), edited), probes)
    [fluency] = by(checks, FLUENCY)
    assert fluency.mode == GENERATION and fluency.passed is False
    assert fluency.score == 0.0 and entropy_of(fluency.after) == 0.0
    assert entropy_of(fluency.before) > 3
    assert fluency.before.endswith(VARIED)
    assert [c.metric for c in checks if not c.passed] == [FLUENCY]


def test_fluency_passes_when_text_stays_varied(probes):
    edited = edit_works(probes) | {"Tell me about Eiffel Tower.": VARIED.replace("Paris", "Rome")}
    [fluency] = by(run_checks(ScriptedView(REQUEST, world(probes), edited), probes), FLUENCY)
    assert fluency.passed is True and fluency.score == pytest.approx(entropy_of(fluency.after), abs=1e-3)


def test_on_check_is_called_once_per_check_as_each_finishes(probes):
    seen: list[CheckRecord] = []
    view = ScriptedView(REQUEST, world(probes), edit_works(probes))

    def on_check(check: CheckRecord) -> None:
        seen.append(check)
        # Teacher-forced checks are reported before any generation; generation checks once all are done.
        asked = sum(1 for kind, _, _ in view.calls if kind in ("generate", "complete"))
        assert asked == (2 * len(probes) if check.mode == GENERATION else 0)

    checks = run_checks(view, probes, on_check=on_check)
    assert seen == checks
    assert all(c.passed is not None for c in seen)


def test_generations_are_asked_for_in_one_call_per_state_and_checks_keep_probe_order(probes):
    view = ScriptedView(REQUEST, world(probes), edit_works(probes))
    checks = run_checks(view, probes)
    assert [(kind, edited) for kind, _, edited in view.calls if kind == "answers"] == [("answers", False),
                                                                                       ("answers", True)]
    scored = [p for p in probes if p.metric != FLUENCY]
    assert [c.probe for c in checks] == [p.forced_prompt for p in scored] + [p.text for p in probes]
    assert [c.mode for c in checks] == [TEACHER_FORCED] * len(scored) + [GENERATION] * len(probes)


def test_a_view_without_answers_is_asked_one_probe_at_a_time(probes):
    class OneByOne:
        def __init__(self, scripted: ScriptedView) -> None:
            self.scripted = scripted
            self.request = scripted.request
            self.generate, self.complete = scripted.generate, scripted.complete
            self.logprobs, self.token_accuracies = scripted.logprobs, scripted.token_accuracies

    batched = run_checks(ScriptedView(REQUEST, world(probes), edit_works(probes)), probes)
    scripted = ScriptedView(REQUEST, world(probes), edit_works(probes))
    assert run_checks(OneByOne(scripted), probes) == batched
    assert not any(kind == "answers" for kind, _, _ in scripted.calls)


def test_teacher_forcing_is_batched_and_model_calls_stay_few(probes):
    view = ScriptedView(REQUEST, world(probes), edit_works(probes))
    run_checks(view, probes)
    kinds = [c[0] for c in view.calls]
    assert kinds.count("logprobs") == 2 and kinds.count("token_accuracies") == 2
    assert kinds.count("generate") + kinds.count("complete") == 2 * len(probes)


def test_without_baseline_only_the_edited_state_is_asked(probes):
    reliability = by_probe(probes, RELIABILITY)
    view = ScriptedView(REQUEST, world(probes), edit_works(probes))
    checks = run_checks(view, reliability, baseline=False)
    assert all(c.before is None and c.passed for c in checks)
    assert all(edited for _, _, edited in view.calls)
    with pytest.raises(ValueError, match="baseline"):
        run_checks(view, probes, baseline=False)


def test_question_probes_are_generated_in_chat_and_prompts_completed(probes):
    view = ScriptedView(REQUEST, world(probes), edit_works(probes))
    run_checks(view, probes)
    asked = {(kind, text) for kind, text, _ in view.calls if kind in ("generate", "complete")}
    assert ("complete", "The Eiffel Tower is located in") in asked
    assert ("generate", "Where is the Eiffel Tower?") in asked
    assert ("generate", "What is the capital of France?") in asked


def test_a_large_drop_fails_locality_even_if_the_argmax_was_wrong_before():
    probe = Probe(LOCALITY, "What is the official language of Japan?", "Japanese", kind=QUESTION,
                  cloze="The official language of Japan is")
    scripted = {(probe.cloze, "Japanese", False): -2.2, (probe.cloze, "Japanese", True): -5.5}
    view = ScriptedView(REQUEST, {probe.cloze: "the language of Japan", probe.text: "Japanese."},
                        {probe.cloze: "the Italian language"}, logprobs=scripted)
    tf, gen = run_checks(view, [probe])
    assert tf.before.endswith("acc=0.00") and tf.passed is False  # same (zero) accuracy is not "unchanged"
    assert gen.passed is True
