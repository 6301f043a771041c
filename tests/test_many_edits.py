"""The many-edits benchmark's checkpoint on a scripted engine: reliability, neighbours, and the paired
latency ratio (each question asked with the ledger, then with memory off, under the same load)."""

from __future__ import annotations

import json

from bench import many_edits
from kbchat.audit.relations import questions
from kbchat.evaluation.datasets import load_cases
from kbchat.records import Answer
from tests.test_bench import FLAT


class ScriptedEngine:
    """Answers an edited subject's question with its new object while memory is on."""

    def __init__(self, edited: dict[str, str]) -> None:
        self.edited = edited
        self.calls: list[tuple[str, bool]] = []

    def ask(self, text: str, *, max_new_tokens: int, memory: bool = True) -> Answer:
        self.calls.append((text, memory))
        sum(range(20_000))  # some CPU time, so the ratios have a denominator
        hit = next((new for subject, new in self.edited.items() if subject in text), None) if memory else None
        return Answer(f"It is {hit}." if hit else f"UneditedAnswers answer to {text}", used_edits=(1,) if hit else (),
                      tokens=4)


def test_checkpoint_pairs_each_question_with_memory_off(tmp_path):
    (data := tmp_path / "cf.json").write_text(json.dumps(FLAT))
    edits = load_cases(data)
    engine = ScriptedEngine({c.request.subject: c.request.target for c in edits})
    neighbours = ["What is the capital of France?"]
    base = many_edits.ask_all(ScriptedEngine({}), [*neighbours, *(questions(c.request)[0] for c in edits)])
    row = many_edits.checkpoint(engine, edits, [0, 1], neighbours, base)
    asked = [questions(c.request)[0] for c in edits] + neighbours
    assert engine.calls == [(q, memory) for q in asked for memory in (True, False)]
    assert row["reliability"] == {"rate": 1.0, "n": 2, "edit_in_scope": 2}
    assert row["neighbours_unchanged"]["rate"] == 1.0 and row["memory_off_as_empty_ledger"] == 1.0
    assert row["latency_ratio_paired"] > 0 and "latency_ratio_paired_edited" in row
    assert "paired, same load" in many_edits.table([row | {"active_edits": 2, "seconds_per_edit": None,
                                                           "cpu_seconds_per_edit": None}])
