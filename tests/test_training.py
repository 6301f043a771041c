"""`kbchat train-editor` and its training records, on the tiny random Llama.

The records come from the shared data's training files (`../shared/data`); the tests are skipped when
that folder is missing. The end-to-end test trains a MEND editor for 10 steps through the CLI, then a
LocalEngine finds it in `<home>/editors/` and makes a `--method mend` edit with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kbchat.errors import KbchatError
from kbchat.training import records
from methods.mend.instruct import DEFAULT_TASKS
from tests.engines import WordEmbedder, local_engine, save_tiny_llama
from tests.tiny_models import one_thread, tiny

DATA = records.default_data_dir()
needs_data = pytest.mark.skipif(not (DATA / records.COUNTERFACT_FILE).is_file() or not (DATA / records.ZSRE_FILE).is_file(),
                                reason="../shared/data is not here")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny("llama")[1]


@pytest.fixture(scope="module")
def split(tokenizer):
    return records.build(DATA, records.TASKS, tokenizer, seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@needs_data
def test_every_task_has_training_and_validation_records(split) -> None:
    counts = split.counts()
    assert set(counts) == set(records.TASKS) == {t.name for t in DEFAULT_TASKS}
    for task, c in counts.items():
        assert c["train"] > 100 and c["val"] > 10, (task, c)
    assert all(r.prompt and r.target.strip() and r.paraphrase and r.locality and r.locality_answer.strip()
               for r in split.train + split.val)
    # the first validation records mix the tasks (train() scores a prefix of them)
    assert {r.task for r in split.val[:6]} == set(records.TASKS)


@needs_data
def test_no_validation_case_leaks_into_training(split, tokenizer) -> None:
    def key(r):
        return (r.subject, r.target)

    val_keys = {key(r) for r in split.val}
    assert not val_keys & {key(r) for r in split.train}
    assert not {r.prompt for r in split.val} & {r.prompt for r in split.train}
    assert not {r.locality for r in split.val if r.task == "chat"} & {r.locality for r in split.train if r.task == "chat"}
    # a held-out subject has no training record of any task
    assert not {r.subject.lower() for r in split.val} & {r.subject.lower() for r in split.train}
    # the split does not depend on the tasks trained (single-task editors are validated alike), and
    # the benchmark's zsRE rows are exactly the held-out ones
    qa = "question answering"
    assert set(records.build(DATA, ["qa"], seed=0).val) == {r for r in split.val if r.task == qa}
    assert {row["src"] for row in records.held_out_zsre_rows(DATA, seed=0)} == {r.prompt for r in split.val if r.task == qa}
    # and the split is the seed's: the same twice, another with another seed
    again = records.build(DATA, records.TASKS, tokenizer, seed=0)
    assert again.val == split.val and again.train == split.train
    assert records.build(DATA, ["counterfact"], seed=1).val != [r for r in split.val if r.task == "counterfactual completion"]


@needs_data
def test_chat_prompts_end_at_the_assistant_turn(split, tokenizer) -> None:
    header = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                           tokenize=False).split("x", 1)[1]
    chats = [r for r in split.train + split.val if r.task == "chat"]
    assert chats
    for r in chats[:500]:
        assert r.prompt.endswith(header) and r.paraphrase.endswith(header)
        assert r.locality.endswith(header) and r.locality_answer.strip()  # its answer is the reply
        assert r.target not in r.prompt.split(header)[-1]


def test_bad_input_is_a_one_line_error(tmp_path, tokenizer) -> None:
    with pytest.raises(KbchatError, match="unknown task"):
        records.task_name("poetry")
    with pytest.raises(KbchatError, match="not found"):
        records.build(tmp_path, ["counterfact"])
    (tmp_path / "counterfact").mkdir()
    (tmp_path / "counterfact" / "counterfact-val.json").write_text("[]")
    with pytest.raises(KbchatError, match="never reads"):
        records._load(tmp_path / "counterfact" / "counterfact-val.json")


def test_cli_rejects_bad_options(tmp_path, tiny_dir) -> None:
    from kbchat.cli import run

    base = ["--model", str(tiny_dir), "--home", str(tmp_path / "home"), "train-editor", "--method", "mend"]
    with pytest.raises(KbchatError, match="unknown task"):
        run([*base, "--tasks", "poetry"])
    with pytest.raises(KbchatError, match="not found"):
        run([*base, "--data", str(tmp_path / "nowhere")])
    with pytest.raises(KbchatError, match="nothing to resume"):
        run([*base, "--resume", "--out", str(tmp_path / "none.safetensors")])


@needs_data
def test_train_editor_end_to_end(tmp_path, tiny_dir, capsys) -> None:
    """10 steps through the CLI into <home>/editors/; the engine finds the editor and edits with it;
    another model (no editor) is told how to train one."""
    from kbchat.cli import run
    from methods.mend import read_spec, state_path
    from methods.mend.checkpoint import read_header

    home = tmp_path / "home"
    args = ["--model", str(tiny_dir), "--home", str(home), "train-editor", "--method", "mend", "--c-loc", "2", "--steps", "10",
            "--val-every", "5", "--val-size", "6", "--threads", "1", "--batch-size", "2"]
    with one_thread():
        assert run(args) == 0
    out = home / "editors" / f"mend-{tiny_dir.name}.safetensors"
    printed = capsys.readouterr().out
    assert str(out) in printed and "--method mend" in printed
    assert out.is_file() and state_path(out).is_file()
    assert read_spec(out).kind == "mend"
    assert json.loads(read_header(out)["about"])["config"]["c_loc"] == 2.0
    log = [json.loads(line) for line in out.with_name(out.name.replace(".safetensors", ".log.jsonl")).open()]
    assert [row["step"] for row in log] == list(range(1, 11))
    assert [row["step"] for row in log if "val_success" in row] == [5, 10]

    # resuming to 12 steps carries on from step 10 (and appends to the log)
    with one_thread():
        assert run([*args[:-8], "--steps", "12", "--val-every", "5", "--val-size", "6", "--threads", "1",
                    "--batch-size", "2", "--resume"]) == 0
    log = [json.loads(line) for line in out.with_name(out.name.replace(".safetensors", ".log.jsonl")).open()]
    assert [row["step"] for row in log] == list(range(1, 13))

    with one_thread():
        engine = local_engine(tiny_dir, home, tmp_path / "ledger.db", WordEmbedder())
        try:
            model, tok = engine.runtime.loaded.model, engine.runtime.loaded.tokenizer
            prompt, target = "The Eiffel Tower is located in", "Rome"
            before = _target_nll(model, tok, prompt, target)
            record = engine.edit(f"Eiffel Tower | {prompt} | {target}", method="mend", audit="off")
            assert record.method == "mend" and record.status == "active"
            after = _target_nll(model, tok, prompt, target)
            assert after < before  # the edit raised P(target)
        finally:
            engine.close()

        # the shipped form (network factors in bfloat16) loads and gives nearly the same delta
        from kbchat.training.ship import ship
        from methods.mend import compute, load_editor
        from methods.requests import EditRequest

        small = ship(out, tmp_path / "shipped.safetensors")
        assert small.stat().st_size < 0.75 * out.stat().st_size
        model, tok = tiny("llama")
        request = [EditRequest("Eiffel Tower", prompt, target)]
        full = compute(model, tok, request, editor=load_editor(out))
        shipped = compute(model, tok, request, editor=load_editor(small))
        for a, b in zip(full.updates, shipped.updates, strict=True):
            da, db = a.left @ a.right.T, b.left @ b.right.T
            assert float((da - db).norm() / da.norm()) < 0.02

        other = save_tiny_llama(tmp_path / "other-llama")  # same weights, another folder: same fingerprint
        torch.manual_seed(1)
        # a different model: perturb one weight so its fingerprint differs
        from transformers import AutoModelForCausalLM

        m = AutoModelForCausalLM.from_pretrained(other)
        with torch.no_grad():
            m.lm_head.weight.mul_(1.01)
        m.save_pretrained(other)
        engine = local_engine(other, tmp_path / "other-home", tmp_path / "ledger2.db", WordEmbedder())
        try:
            with pytest.raises(KbchatError, match="kbchat train-editor"):
                engine.edit(f"Eiffel Tower | {prompt} | {target}", method="mend", audit="off")
        finally:
            engine.close()


def _target_nll(model, tokenizer, prompt: str, target: str) -> float:
    from methods.mend.batch import encode, row_nll

    batch = encode(tokenizer, [(prompt, target)])
    with torch.no_grad():
        return float(row_nll(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch)[0])


@needs_data
def test_training_is_deterministic_and_resumes_exactly(tmp_path, tiny_dir) -> None:
    """The same seed gives the same editor; 4 steps then --resume to 6 gives the 6-step run's editor."""
    from safetensors.torch import load_file

    from kbchat.cli import run
    from methods.mend import state_path

    def train(out: Path, steps: int, *extra: str) -> dict:
        args = ["--model", str(tiny_dir), "--home", str(tmp_path / "home"), "train-editor", "--method",
                "instructedit", "--steps", str(steps), "--val-every", "3", "--val-size", "3", "--batch-size", "2",
                "--threads", "1", "--out", str(out), *extra]
        with one_thread():
            assert run(args) == 0
        return {k: v for k, v in load_file(str(state_path(out))).items() if not k.startswith("train.")}

    first = train(tmp_path / "a.safetensors", 6)
    again = train(tmp_path / "b.safetensors", 6)
    train(tmp_path / "c.safetensors", 4)
    resumed = train(tmp_path / "c.safetensors", 6, "--resume")
    for key, value in first.items():
        assert torch.equal(value, again[key]), key
        assert torch.equal(value, resumed[key]), key


@needs_data
def test_an_editor_is_evaluated_on_a_task_it_was_not_trained_on(tmp_path, tiny_dir) -> None:
    """Trained on two tasks (InstructEdit), evaluated on all three: the held-out task with its own
    instruction, at a training wording and at the held-out wording."""
    from kbchat.cli import run
    from kbchat.training.evaluate import evaluate

    out = tmp_path / "two-tasks.safetensors"
    args = ["--model", str(tiny_dir), "--home", str(tmp_path / "home"), "train-editor", "--method", "instructedit",
            "--tasks", "counterfact", "qa", "--steps", "2", "--val-every", "2", "--val-size", "2",
            "--batch-size", "2", "--threads", "1", "--out", str(out)]
    with one_thread():
        assert run(args) == 0
        result = evaluate(out, n=6, skip=0, model=str(tiny_dir), home=str(tmp_path / "home"))
    from methods.mend.checkpoint import read_header

    assert set(json.loads(read_header(out)["about"])["train_tasks"]) == {"counterfactual completion",
                                                                          "question answering"}
    for wording in ("training wording", "held-out wording"):
        per_task = result["results"][wording]
        assert set(per_task) == set(records.TASKS)  # chat included, though never trained on
        assert all(0.0 <= figures["success"] <= 1.0 and figures["n"] > 0 for figures in per_task.values())
        for figures in per_task.values():  # each record's edit loss, for paired comparisons: they make the mean
            assert len(figures["edit_rows"]) == figures["n"]
            assert sum(figures["edit_rows"]) / figures["n"] == pytest.approx(figures["edit"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["instructedit", "mend"])
def test_the_shipped_editors_edit_the_default_model(model_home, kind) -> None:
    """The editors in methods/mend/editors/ are found for the default model by its fingerprint (searching the
    shipped folder), and their edit raises P(Rome) on the edited prompt by more than a nat."""
    import methods
    from kbchat.editors import SHIPPED
    from kbchat.runtime import load_model
    from methods.mend import find_editor
    from methods.requests import EditRequest

    loaded = load_model(None, model_home)
    model, tok = loaded.model, loaded.tokenizer
    fingerprint = methods.model_fingerprint(model)
    assert find_editor([SHIPPED], fingerprint, kind) is not None
    prompt = "The Eiffel Tower is located in"
    before = _target_nll(model, tok, prompt, "Rome")
    delta = methods.get(kind).compute(model, tok, [EditRequest("Eiffel Tower", prompt, "Rome")],
                                      editors=[SHIPPED])
    applied = delta.apply(model)
    try:
        assert _target_nll(model, tok, prompt, "Rome") < before - 1.0
    finally:
        applied.undo()


def test_curves_merge_the_validation_history_and_keep_the_runs_best() -> None:
    from kbchat.training.curves import summarise

    rows = [{"step": s, "edit_loss": 5.0 - s, "loc_loss": 0.1, "seconds": float(s)} for s in (1, 2, 3, 4)]
    rows[1].update(val_edit_loss=3.0, val_loc_loss=0.2, val_success=0.5, best_step=2)
    rows[3].update(val_edit_loss=1.0, val_loc_loss=0.9, val_success=0.9, best_step=2)  # worse by train()'s objective
    history = [{"step": 0, "edit": 9.0, "loc": 0.0, "success": 0.0, "kept": 1.0},
               {"step": 2, "edit": 3.0, "loc": 0.2, "success": 0.5, "kept": 0.75},
               {"step": 4, "edit": 1.0, "loc": 0.9, "success": 0.9, "kept": 0.25}]
    run = summarise("mend", rows, {"note": "x"}, history)
    assert [v["step"] for v in run["validations"]] == [0, 2, 4]
    assert [v["val_kept"] for v in run["validations"]] == [1.0, 0.75, 0.25]
    assert run["best"]["step"] == 2 and run["steps"] == 4 and run["wall_seconds"] == 4.0
    assert summarise("mend", rows)["validations"][0]["step"] == 2  # no history: what the log holds


def test_curves_continue_the_clock_of_a_resumed_run(tmp_path) -> None:
    from kbchat.training.curves import read_log

    log = tmp_path / "e.log.jsonl"
    lines = [{"step": 1, "seconds": 10.0}, {"step": 2, "seconds": 20.0}, {"step": 2, "seconds": 3.0},
             {"step": 3, "seconds": 6.0}]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert [(r["step"], r["seconds"]) for r in read_log(log)] == [(1, 10.0), (2, 23.0), (3, 26.0)]


@needs_data
def test_an_editor_at_the_subject_trains_and_is_evaluated_whitened(tmp_path, tiny_dir) -> None:
    """`--at-subject` (experimental) trains an editor of the locate-then-edit layers' output matrices,
    whitened with second moments kept in the home's statistics; the evaluation whitens it the same way."""
    from kbchat.cli import run
    from kbchat.training.evaluate import evaluate
    from methods.mend import read_spec

    out, home = tmp_path / "subject.safetensors", tmp_path / "home"
    args = ["--model", str(tiny_dir), "--home", str(home), "train-editor", "--method", "mend", "--at-subject",
            "--steps", "2", "--val-every", "2", "--val-size", "2", "--batch-size", "2", "--threads", "1",
            "--out", str(out)]
    with one_thread():
        assert run(args) == 0
        result = evaluate(out, n=3, skip=0, model=str(tiny_dir), home=str(home))
    spec = read_spec(out)
    assert spec.at_subject and spec.whiten is not None
    assert all(name.endswith(("down_proj", "c_proj")) for name in spec.names)
    assert any((home / "stats").iterdir())  # the whitening's moments, kept for the next run
    figures = result["results"]["training wording"]
    assert all(0.0 <= f["success"] <= 1.0 and f["edit"] == f["edit"] for f in figures.values())
