"""The InstructEdit table's runner (bench/instructedit_table.py): which runs it trains, how it reads a
resumed run's wall time, and how the table marks a held-out task."""

from __future__ import annotations

import json

from bench.instructedit_table import DEFAULT_RUNS, HELD_OUT, finished, format_table, runs, training_seconds
from kbchat.training.command import log_path


def test_runs_compare_like_with_like():
    all_runs = runs()
    assert len({r.slug for r in all_runs}) == len(all_runs) == 11
    tasks = all_runs[0].tasks
    held = [r for r in all_runs if "held out" in r.label]
    for task in tasks:  # each task has a pair, InstructEdit and MEND, trained on the other two
        pair = [r for r in held if r.label.startswith(("InstructEdit, " + task, "MEND, " + task))]
        assert {r.method for r in pair} == {"mend", "instructedit"}
        assert all(r.tasks == tuple(t for t in tasks if t != task) for r in pair)
    default = all_runs[:DEFAULT_RUNS]  # without --only: the paper's comparison, chat held out
    assert [r for r in default if "held out" in r.label] == [r for r in held if HELD_OUT not in r.tasks]
    assert [r.tasks for r in all_runs if r.label.startswith("MEND, single")] == [(t,) for t in tasks]


def test_a_resumed_runs_wall_time_adds_its_parts(tmp_path):
    out = tmp_path / "e.safetensors"
    rows = [{"step": 1, "seconds": 10.0}, {"step": 2, "seconds": 20.0},  # stopped, then resumed:
            {"step": 3, "seconds": 4.0}, {"step": 4, "seconds": 9.0}]  # the clock restarts
    log_path(out).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert training_seconds(out) == 29.0
    assert not finished(out, 4)  # no editor file yet
    out.write_bytes(b"x")
    assert finished(out, 4) and not finished(out, 5)


def test_the_table_marks_the_held_out_task():
    score = {"success": 0.5, "edit": 1.0, "loc": 0.01}
    row = {"label": "InstructEdit, chat held out", "tasks": ["counterfactual completion", "question answering"],
           "seconds": 600, "scores": {"results": {"training wording": {
               "counterfactual completion": score, "question answering": score, "chat": score}}}}
    table = format_table({"command": "x", "steps": 10, "c_loc": 5.0, "seed": 0, "n": 6, "runs": [row]})
    line = next(line for line in table.splitlines() if line.startswith("| InstructEdit"))
    assert line.count("*held out*") == 1 and line.endswith("| 10 min |")
