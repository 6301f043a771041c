"""Where MEND and InstructEdit find their editor: `editors=` first, then the editors shipped with the
library for the default model (`methods.mend.SHIPPED`), so `compute(model, tokenizer, requests)` needs
no further argument there; for any other model a one-line EditorNotFound names the training command."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

import methods
from methods.mend import SHIPPED, Editor, EditorNotFound, find_editor, read_spec, save_editor
from methods.mend.checkpoint import search_path
from methods.mend.training import new_spec
from methods.requests import EditRequest
from methods.stats import model_fingerprint
from tests.tiny_models import edit_requests, tiny

KINDS = ("mend", "instructedit")
DEFAULT_FINGERPRINT = "c5596cda3168ae6ec721db0afda61f501fa1f8dfdebe78c0c12e4bc1621f4883"  # README.md there


def shipped_files() -> list[Path]:
    return sorted(SHIPPED.glob("*.safetensors"))


def test_the_shipped_editors_are_in_the_library_with_their_recorded_hashes() -> None:
    assert SHIPPED == Path(methods.__file__).resolve().parent / "mend" / "editors"
    readme = (SHIPPED / "README.md").read_text()
    recorded = dict(re.findall(r"\| `([^`]+\.safetensors)` \|[^|]*\|[^|]*\| `([0-9a-f]{64})` \|", readme))
    assert sorted(recorded) == [p.name for p in shipped_files()] and len(recorded) == len(KINDS)
    for path in shipped_files():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded[path.name], path.name


@pytest.mark.parametrize("kind", KINDS)
def test_the_shipped_editor_is_found_by_the_default_models_fingerprint(kind) -> None:
    path = find_editor([SHIPPED], DEFAULT_FINGERPRINT, kind)
    assert path is not None and path.name.startswith(f"{kind}-")
    assert read_spec(path).fingerprint == DEFAULT_FINGERPRINT and read_spec(path).kind == kind
    assert find_editor(search_path(), DEFAULT_FINGERPRINT, kind) == path  # no `editors=`: still found
    assert find_editor([SHIPPED], DEFAULT_FINGERPRINT[::-1], kind) is None


def test_the_search_path_puts_given_editors_first_and_the_shipped_ones_once_last(tmp_path) -> None:
    mine = tmp_path / "editors"
    assert search_path() == (SHIPPED,)
    assert search_path([mine, str(tmp_path)]) == (mine, tmp_path, SHIPPED)
    assert search_path(str(mine)) == (mine, SHIPPED)  # one path, not its characters
    assert search_path([mine, SHIPPED, mine]) == (mine, SHIPPED)


def test_an_editor_given_is_preferred_to_a_shipped_one(tmp_path, monkeypatch) -> None:
    """A user's editor for the model wins over a shipped one for the same fingerprint."""
    model, tok = tiny("llama")
    fingerprint = model_fingerprint(model)
    shipped, mine = tmp_path / "shipped", tmp_path / "mine"
    for folder in (shipped, mine):
        spec = new_spec(model, methods.get("mend").hparams(model, rank=8), "mend", fingerprint, ())
        save_editor(Editor(spec), folder / "mend.safetensors", {"where": folder.name})
    monkeypatch.setattr("methods.mend.checkpoint.SHIPPED", shipped)
    assert find_editor(search_path(), fingerprint, "mend") == shipped / "mend.safetensors"
    assert find_editor(search_path([mine]), fingerprint, "mend") == mine / "mend.safetensors"
    delta = methods.get("mend").compute(model, tok, edit_requests(1))  # found in the (patched) shipped dir
    assert delta.meta["editor"]["fingerprint"] == fingerprint


@pytest.mark.parametrize("kind", KINDS)
def test_no_editor_for_another_model_is_one_line_naming_the_command(kind) -> None:
    model, tok = tiny("llama")
    with pytest.raises(EditorNotFound) as caught:
        methods.get(kind).compute(model, tok, edit_requests(1))  # no editors=: only the shipped ones
    message = str(caught.value)
    assert "\n" not in message and "kbchat train-editor --method" in message
    assert f"`kbchat train-editor --method {kind}`" in message
    assert {"mend": "MEND", "instructedit": "InstructEdit"}[kind] in message
    assert model_fingerprint(model)[:12] in message  # the tiny model's config has no name


def test_the_message_names_the_model_when_its_config_does(tmp_path) -> None:
    model, tok = tiny("llama")
    model.config._name_or_path = str(tmp_path / "models" / "My-Model\nv2")
    with pytest.raises(EditorNotFound) as caught:
        methods.get("mend").compute(model, tok, edit_requests(1), editors=[tmp_path])
    message = str(caught.value)
    assert "\n" not in message and "My-Model v2" in message and str(tmp_path) not in message
    assert message.endswith("train one with `kbchat train-editor --method mend`")


@pytest.fixture(scope="module")
def default_model(model_home):
    """The real default model, loaded as the app loads it (the test's only use of kbchat)."""
    from kbchat.runtime import load_model

    loaded = load_model(None, model_home)
    return loaded.model, loaded.tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_the_default_model_needs_no_editors_argument(default_model, kind) -> None:
    model, tok = default_model
    request = EditRequest("Eiffel Tower", "The Eiffel Tower is located in", "Rome")
    delta = methods.get(kind).compute(model, tok, [request])
    assert delta.meta["editor"]["kind"] == kind
    assert delta.meta["editor"]["fingerprint"] == model_fingerprint(model) == DEFAULT_FINGERPRINT
