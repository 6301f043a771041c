"""The InstructEdit table's runner (bench/instructedit_table.py): which runs it trains, how it reads a
resumed run's wall time, and how the table marks a held-out task."""

from __future__ import annotations

import json

import pytest

from bench.instructedit_table import (
    HELD_OUT,
    default_runs,
    finished,
    format_table,
    paired_difference,
    runs,
    training_seconds,
)
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
    default = default_runs()  # without --only: the paper's comparison, chat held out
    assert default == all_runs[: len(default)]
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
    row = {"label": "InstructEdit, chat held out", "method": "instructedit",
           "tasks": ["counterfactual completion", "question answering"], "seconds": 600, "scores": {"results": {"training wording": {
               "counterfactual completion": score, "question answering": score, "chat": score}}}}
    table = format_table({"command": "x", "steps": 10, "c_loc": 5.0, "seed": 0, "n": 6, "runs": [row]})
    line = next(line for line in table.splitlines() if line.startswith("| InstructEdit"))
    assert line.count("*held out*") == 1 and line.endswith("| 10 min |")


def test_the_paired_difference_and_its_interval():
    mean, low, high = paired_difference([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 4.0, 6.0])  # differences -1, 0, -1, -2
    assert mean == pytest.approx(-1.0)
    half = 1.96 * (2 / 3) ** 0.5 / 2  # sample sd sqrt(2/3), n 4
    assert (low, high) == (pytest.approx(-1.0 - half), pytest.approx(-1.0 + half))
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


def test_the_table_compares_the_held_out_pair_record_by_record():
    tasks = runs()[0].tasks

    def row(method, rows, wordings=("training wording",)):
        scores = {w: {t: {"success": 0.0, "edit": sum(rows) / len(rows), "loc": 0.1, "edit_rows": rows} for t in tasks}
                  for w in wordings}
        return {"label": method, "method": method, "tasks": list(tasks[:2]), "seconds": 60,
                "scores": {"results": scores}}

    result = {"command": "x", "steps": 10, "c_loc": 1.0, "seed": 0, "n": 6,
              "runs": [row("instructedit", [1.0, 2.0, 3.0], ("training wording", "held-out wording")),
                       row("mend", [2.0, 3.0, 3.0])]}
    lines = [line for line in format_table(result).splitlines() if line.startswith("- ")]
    assert len(lines) == 2 and all(line.startswith(f"- {tasks[2]} held out") for line in lines)
    assert "edit loss -0.67 nats" in lines[0] and "over 3 records" in lines[0]
    result["runs"].pop()  # no MEND row to compare with: no comparison
    assert not [line for line in format_table(result).splitlines() if line.startswith("- ")]
