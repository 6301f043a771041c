"""bench.chat_compare: answers of two chat benchmark runs matched by case, part and question."""

from __future__ import annotations

from bench.chat_compare import compare


def _run(after: str, follow: str, rate: float, cases: tuple[str, ...] = ("1", "2")) -> dict:
    rows = [{"case": c, "before": {"Q?": "old fact"}, "after": {"Q?": after, "q?": after},
             "follow_up": ["And it?", follow]} for c in cases]
    return {"command": "x", "per_case": rows, "figures": {"reliability": {"rate": rate, "n": len(rows)}}}


def test_only_common_cases_are_compared_and_each_difference_is_named() -> None:
    old = _run("Rome.", "In Rome.", 1.0)
    new = _run("Rome.", "It is in Rome.", 0.5, cases=("2", "3"))
    result = compare(old, new)
    assert (result["cases"], result["answers"], result["identical"]) == (1, 4, 3)
    assert result["differ"] == [{"case": "2", "part": "follow_up", "question": "And it?", "old": "In Rome.",
                                 "new": "It is in Rome."}]
    assert result["figures"] == {"reliability": [1.0, 0.5]}
