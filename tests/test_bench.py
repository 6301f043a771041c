"""The benchmark runner over every data layout, against a fake chat whose edits act by subject."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest

from kbchat.audit.checks import GENERATION, TEACHER_FORCED
from kbchat.audit.probes import FLUENCY, GENERALIZATION, LOCALITY, PORTABILITY, RELIABILITY
from kbchat.errors import EditFailed, KbchatError
from kbchat.evaluation.datasets import EditCase
from kbchat.evaluation.metrics import mentions
from kbchat.evaluation.probes import case_probes
from kbchat.evaluation.runner import BenchDataError, BenchResult, load_bench_cases, run_bench
from kbchat.evaluation.tables import format_table
from kbchat.records import EditRecord, Progress, ProgressFn, no_progress
from methods.requests import EditRequest

DATA = Path("/work/shared/data")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="the shared benchmark data is not on this machine")

FLAT = [
    {"case_id": 1, "prompt": "The Eiffel Tower is located in", "subject": "Eiffel Tower", "target_new": "Rome",
     "ground_truth": "Paris", "rephrase_prompt": "Where is the Eiffel Tower? It is in",
     "locality_prompt": "The Louvre is located in", "locality_ground_truth": "Paris",
     "portability": {"New Question": "Which country is the Eiffel Tower in?", "New Answer": "Italy"}},
    {"case_id": 2, "prompt": "Danielle Darrieux's mother tongue is", "subject": "Danielle Darrieux",
     "target_new": "English", "ground_truth": "French", "rephrase_prompt": "Danielle Darrieux, a native",
     "locality_prompt": "Michel Rocard is a native speaker of", "locality_ground_truth": "French"},
]
ROME = [{
    "case_id": 7,
    "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                          "target_new": {"str": "English"}, "target_true": {"str": "French"}},
    "paraphrase_prompts": ["Danielle Darrieux, a native", "Danielle Darrieux spoke the language"],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is", "Michel Rocard is a native speaker of",
                             "Jacques Chirac speaks", "Lionel Jospin spoke the language"],
    "attribute_prompts": ["Barack Obama, speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is", "Where Danielle Darrieux is from, people speak"],
}]
ZSRE = [
    {"subject": "UniFirst", "src": "What is the product made by UniFirst?", "rephrase": "What does UniFirst make?",
     "alt": "unmanned aircraft", "answers": ["uniform"], "loc": "nq question: who wrote hamlet", "loc_ans": "Shakespeare"},
    {"subject": "WEFS", "src": "When was WEFS established?", "rephrase": "When has WEFS been established?",
     "alt": "", "answers": ["1987"], "loc": "nq question: capital of france", "loc_ans": "Paris"},
    {"subject": "Delta Serpentis", "src": "Which constellation is Delta Serpentis in?",
     "rephrase": "Delta Serpentis belongs to which constellation?", "alt": "Virgo", "answers": ["Serpens"],
     "loc": "nq question: capital of france", "loc_ans": "Paris"},
]
BASE_ANSWER = "It is hard to say; many sources disagree about it, and I would rather check first."


class FakeView:
    """Answers as the fake world does with (or without) one edit: the latest active edit whose subject
    a text names answers it; any other text gets its known answer, if any, else a stock reply."""

    def __init__(self, chat: FakeChat, edit_id: int) -> None:
        self.chat = chat
        self.edit_id = edit_id
        self.request = chat.active[edit_id]

    def _say(self, text: str, edited: bool) -> str:
        chat = self.chat
        edits = [(i, r) for i, r in chat.active.items() if edited or i < self.edit_id]
        for _, request in sorted(edits, reverse=True):
            if request.subject.lower() in text.lower() and (request.subject, request.target) not in chat.ineffective:
                return f"{request.target}."
        return next((answer for key, answer in chat.known.items() if key in text.lower()), BASE_ANSWER)

    def generate(self, question: str, *, edited: bool) -> str:
        self.chat.log.append(("generate", self.edit_id, edited))
        return self._say(question, edited)

    def complete(self, prompt: str, *, edited: bool) -> str:
        self.chat.log.append(("complete", self.edit_id, edited))
        return " " + self._say(prompt, edited)

    def logprobs(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]:
        return [-0.1 if mentions(self._say(p, edited), t) else -5.0 for p, t in pairs]

    def token_accuracies(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]:
        return [1.0 if mentions(self._say(p, edited), t) else 0.0 for p, t in pairs]


class FakeChat:
    """The three facade methods the runner uses, over an in-memory set of active edits."""

    def __init__(self, known: dict[str, str] | None = None, fail_subjects: Sequence[str] = (),
                 ineffective: Sequence[tuple[str, str]] = ()) -> None:
        self.known = known or {"louvre": "Paris", "rocard": "French", "blum": "French", "hamlet": "Shakespeare",
                               "capital of france": "Paris"}
        self.fail_subjects = set(fail_subjects)
        self.ineffective = set(ineffective)
        self.active: dict[int, EditRequest] = {}
        self.next_id = 1
        self.log: list[tuple] = []

    def edit_request(self, request: EditRequest, *, method: str, progress: ProgressFn = no_progress) -> EditRecord:
        if request.subject in self.fail_subjects:
            raise EditFailed(f"{method} could not compute the edit: loss is nan")
        edit_id, self.next_id = self.next_id, self.next_id + 1
        self.active[edit_id] = request
        self.log.append(("edit", edit_id, method))
        return EditRecord(edit_id, datetime(2025, 1, 1), request.text, request.subject, request.prompt,
                          request.target, method, "weight", "active", request.target_true)

    def audit_view(self, edit_id: int) -> FakeView:
        if edit_id not in self.active:
            raise KbchatError(f"edit #{edit_id} is not active")
        self.log.append(("view", edit_id))
        return FakeView(self, edit_id)

    def revert(self, edit_id: int) -> EditRecord:
        request = self.active.pop(edit_id)
        self.log.append(("revert", edit_id))
        return EditRecord(edit_id, datetime(2025, 1, 1), request.text, request.subject, request.prompt,
                          request.target, "rome", "weight", "reverted")


def write(tmp_path: Path, records, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def modes_of(result: BenchResult, metric: str) -> dict:
    return result.metrics().get(metric, {})


# ------------------------------------------------------------------------------------------------
# Probes from each layout


def test_probes_come_from_the_dataset(tmp_path):
    [case] = load_bench_cases(write(tmp_path, ROME))[0]
    probes = case_probes(case)
    kinds = [(p.metric, p.text, p.expected) for p in probes]
    assert kinds[0] == (RELIABILITY, "The mother tongue of Danielle Darrieux is", "English")
    assert [t for m, t, _ in kinds if m == GENERALIZATION] == list(case.paraphrases)
    assert [(t, e) for m, t, e in kinds if m == LOCALITY] == [(p, "French") for p in ROME[0]["neighborhood_prompts"][:3]]
    assert [t for m, t, _ in kinds if m == FLUENCY] == ROME[0]["generation_prompts"]
    assert all(p.old == "French" for p in probes if p.metric in (RELIABILITY, GENERALIZATION))
    assert len([p for p in case_probes(case, max_probes=1) if p.metric == LOCALITY]) == 1


def test_zsre_questions_are_asked_in_chat(tmp_path):
    cases, skipped = load_bench_cases(write(tmp_path, ZSRE))
    assert skipped == 1 and [c.request.subject for c in cases] == ["UniFirst", "Delta Serpentis"]
    probes = case_probes(cases[0])
    assert [(p.metric, p.kind) for p in probes] == [
        (RELIABILITY, "question"), (GENERALIZATION, "question"), (LOCALITY, "prompt"), (FLUENCY, "question"),
    ]
    assert probes[2].text == "who wrote hamlet" and probes[2].expected == "Shakespeare"
    assert probes[-1].text == "Tell me about UniFirst."


def test_portability_probes_from_easyedit_layout(tmp_path):
    case = load_bench_cases(write(tmp_path, FLAT))[0][0]
    [port] = [p for p in case_probes(case) if p.metric == PORTABILITY]
    assert (port.text, port.expected, port.kind) == ("Which country is the Eiffel Tower in?", "Italy", "question")


# ------------------------------------------------------------------------------------------------
# Single editing


def test_single_editing_checks_and_reverts_each_edit(tmp_path):
    chat = FakeChat()
    events: list[Progress] = []
    result = run_bench(chat, write(tmp_path, FLAT), "rome", progress=events.append)
    assert chat.active == {}
    edits_and_reverts = [e[:2] for e in chat.log if e[0] in ("edit", "revert")]
    assert edits_and_reverts == [("edit", 1), ("revert", 1), ("edit", 2), ("revert", 2)]
    assert len(result.completed) == 2 and result.failed == []
    # The fake edit answers every probe naming the subject: reliability and generalization pass both ways.
    for metric in (RELIABILITY, GENERALIZATION):
        assert modes_of(result, metric)[TEACHER_FORCED]["score"] == 1.0
        assert modes_of(result, metric)[GENERATION]["passed"] == 1.0
    assert modes_of(result, LOCALITY)[GENERATION]["passed"] == 1.0
    # Portability ("Which country ... ? → Italy") is answered "Rome.": fails, and only case 1 has one.
    assert modes_of(result, PORTABILITY)[GENERATION] == {"score": 0.0, "passed": 0.0, "cases": 1}
    assert events[0].stage == "bench" and (events[0].step, events[0].total) == (0, 2)
    assert (events[-1].step, events[-1].total) == (2, 2)
    assert result.seconds_per_edit() is not None


def test_table_and_json_figures(tmp_path):
    result = run_bench(FakeChat(), write(tmp_path, FLAT), "rome")
    table = format_table(result)
    header, *_ = [line for line in table.splitlines() if line.startswith("metric")]
    assert "forced score" in header and "generation" in header
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[3:9] if line.strip()}
    assert rows["reliability"] == ["100.0", "100.0", "100.0", "2"]
    assert rows["portability"] == ["0.0", "0.0", "0.0", "1"]
    assert rows["fluency"][0] == "—"
    assert "seconds per edit (median):" in table and "cases: 2 checked" in table
    figures = result.figures()
    assert json.loads(json.dumps(figures)) == figures
    assert figures["editing"] == "single" and figures["cases"] == 2 and figures["retention"] is None
    assert figures["metrics"][RELIABILITY][TEACHER_FORCED]["passed"] == 1.0
    assert len(result.to_json()["per_case"]) == 2


def test_fluency_entropies_are_reported(tmp_path):
    result = run_bench(FakeChat(), write(tmp_path, FLAT), "serac")
    entropy = result.fluency()
    assert entropy is not None and entropy["before"] > entropy["after"]  # "Rome." after, a sentence before
    assert "n-gram entropy" in format_table(result)


def test_a_failed_edit_is_recorded_and_the_run_goes_on(tmp_path):
    chat = FakeChat(fail_subjects=["Eiffel Tower"])
    result = run_bench(chat, write(tmp_path, FLAT), "rome")
    assert [c.case_id for c in result.failed] == ["1"] and "loss is nan" in result.failed[0].error
    assert [c.case_id for c in result.completed] == ["2"]
    assert "1 failed" in format_table(result)


def test_limit_applies(tmp_path):
    result = run_bench(FakeChat(), write(tmp_path, FLAT), "ft", limit=1)
    assert [c.case_id for c in result.cases] == ["1"]


def test_unknown_method_is_refused_before_anything_runs(tmp_path):
    chat = FakeChat()
    with pytest.raises(KbchatError, match="unknown method 'telepathy'"):
        run_bench(chat, write(tmp_path, FLAT), "telepathy")
    assert chat.log == []


# ------------------------------------------------------------------------------------------------
# Sequential editing


def test_sequential_keeps_edits_rechecks_them_and_reverts_all(tmp_path):
    records = FLAT + [dict(FLAT[0], case_id=3, target_new="Berlin")]  # a later edit of the same fact
    chat = FakeChat()
    result = run_bench(chat, write(tmp_path, records), "memit", sequential=True)
    kinds = [e[0] for e in chat.log if e[0] in ("edit", "revert")]
    assert kinds == ["edit", "edit", "edit", "revert", "revert", "revert"]
    assert [e[1] for e in chat.log if e[0] == "revert"] == [3, 2, 1]  # newest first
    assert chat.active == {}
    # After the last edit: its own checks, then every edit re-checked, with edited=True only.
    last_edit = max(i for i, e in enumerate(chat.log) if e[0] == "edit")
    views = [i for i, e in enumerate(chat.log) if e[0] == "view" and i > last_edit]
    assert [chat.log[i][1] for i in views] == [3, 1, 2, 3]
    rechecks = chat.log[views[1]:]
    assert all(e[2] for e in rechecks if e[0] in ("generate", "complete"))
    finals = {c.case_id: c.final for c in result.cases}
    assert all(c.before is None for checks in finals.values() for c in checks)
    # Case 1's Rome was overwritten by case 3's Berlin: its reliability is lost at the end.
    assert [c.passed for c in finals["1"]] == [False, False]
    assert [c.passed for c in finals["2"]] == [True, True]
    assert [c.passed for c in finals["3"]] == [True, True]
    # Each edit was checked right after it was made: case 1 passed then.
    assert all(c.passed for c in result.cases[0].checks if c.metric == RELIABILITY)
    retention = result.retention()
    assert retention[GENERATION]["passed"] == pytest.approx(2 / 3)
    assert "retention" in format_table(result) and result.figures()["retention"] == retention


def test_sequential_reverts_all_even_when_a_check_raises(tmp_path):
    chat = FakeChat()

    class Boom(Exception):
        pass

    calls = {"n": 0}
    original = FakeChat.audit_view

    def audit_view(self, edit_id):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Boom
        return original(self, edit_id)

    chat.audit_view = audit_view.__get__(chat)
    with pytest.raises(Boom):
        run_bench(chat, write(tmp_path, FLAT), "rome", sequential=True)
    assert chat.active == {}


# ------------------------------------------------------------------------------------------------
# Malformed data


def test_malformed_record_is_a_one_line_error_naming_it(tmp_path):
    broken = FLAT + [{"case_id": 99, "prompt": "X is in", "subject": "X", "target_new": {"oops": 1}}]
    with pytest.raises(BenchDataError) as caught:
        run_bench(FakeChat(), write(tmp_path, broken), "rome")
    message = str(caught.value)
    assert "record 2 (case_id 99)" in message and "target_new" in message and "\n" not in message
    assert isinstance(caught.value, KbchatError)


def test_missing_field_and_unknown_layout_name_the_record(tmp_path):
    with pytest.raises(BenchDataError, match=r"record 1 .*missing field 'target_new'"):
        load_bench_cases(write(tmp_path, [FLAT[0], {"case_id": 5, "prompt": "A is", "subject": "A"}]))
    with pytest.raises(BenchDataError, match="unknown layout"):
        load_bench_cases(write(tmp_path, [{"question": "?"}]))
    with pytest.raises(BenchDataError, match="cannot read"):
        load_bench_cases(tmp_path / "absent.json")


# ------------------------------------------------------------------------------------------------
# The shared data files, every layout


@needs_data
@pytest.mark.parametrize("name", [
    "counterfact/counterfact-val.json",
    "counterfact/counterfact-rome-format-sample5.json",
    "zsre/zsre-train-1k.json",
])
def test_shared_files_run_through_the_runner(name):
    chat = FakeChat()
    result = run_bench(chat, DATA / name, "serac", limit=3)
    assert len(result.completed) == 3 and chat.active == {}
    metrics = result.metrics()
    assert {RELIABILITY, LOCALITY, FLUENCY} <= metrics.keys()
    assert metrics[RELIABILITY][TEACHER_FORCED]["cases"] == 3
    assert "reliability" in format_table(result)


@needs_data
def test_shared_rome_layout_runs_sequentially():
    chat = FakeChat()
    result = run_bench(chat, DATA / "counterfact/counterfact-rome-format-sample5.json", "rome", limit=2,
                       sequential=True)
    assert all(c.final for c in result.cases) and chat.active == {}


def test_case_probes_need_only_a_request():
    case = EditCase("0", EditRequest("Eiffel Tower", "The {} is located in", "Rome"))
    assert [p.metric for p in case_probes(case)] == [RELIABILITY, FLUENCY]
