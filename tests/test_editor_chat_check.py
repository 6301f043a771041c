"""A learned editor's edit (MEND, InstructEdit) is checked on the relation's chat question when made,
as serac's patch is (`EngineSettings.editor_scales`): the delta kept, applied and recorded is the one
the check returns; other weight methods are not checked, and `editor_scales=()` skips the check. An
edit that neither the check nor the library's step search (`meta["reached"]`) carries is refused with
EditFailed, and nothing is recorded or applied."""

from __future__ import annotations

import dataclasses

import pytest

from kbchat.config import EngineSettings
from kbchat.engine import pipeline, strength
from kbchat.errors import EditFailed
from methods.mend.checkpoint import save_editor
from tests.engines import WordEmbedder, local_engine, save_tiny_llama
from tests.library.test_mend import fresh_editor
from tests.tiny_models import one_thread

EIFFEL = "Eiffel Tower | The Eiffel Tower is located in | Rome"
COLOSSEUM = "Colosseum | The Colosseum is located in | Paris"


@pytest.fixture()
def checks(monkeypatch) -> list[tuple]:
    """Each strength check made: (method, scales, steered); the screen passes every edit and the
    check answers with the last scale."""
    made: list[tuple] = []

    def last_scale(runtime, delta, request, scales, *args, steer=None, **kwargs):
        made.append((delta.method, tuple(scales), steer is not None))
        return delta.scaled(scales[-1])

    monkeypatch.setattr(strength, "could_name", lambda *args: True)
    monkeypatch.setattr(strength, "first_naming", last_scale)
    return made


def _searched(monkeypatch, reached: bool) -> None:
    """The library's step search reports `reached` for every request (a tiny random model's own verdict
    is whatever its weights happen to give)."""
    compute = pipeline.EditPipeline.compute

    def reporting(self, *args, **kwargs):
        delta = compute(self, *args, **kwargs)
        return dataclasses.replace(delta, meta={**delta.meta, "reached": [reached] * len(delta.meta["requests"])})

    monkeypatch.setattr(pipeline.EditPipeline, "compute", reporting)


def _engine(tmp_path, settings: EngineSettings | None = None):
    engine = local_engine(save_tiny_llama(tmp_path / "model"), tmp_path / "home", tmp_path / "ledger.db",
                          WordEmbedder(), settings)
    save_editor(fresh_editor(engine.runtime.loaded.model), tmp_path / "home" / "editors" / "mend-tiny.safetensors")
    return engine


def test_a_learned_editors_edit_is_the_one_its_chat_check_keeps(tmp_path, checks) -> None:
    with one_thread():
        engine = _engine(tmp_path)
        try:
            before = engine.runtime.deltas
            record = engine.edit(EIFFEL, method="mend", audit="off")
            scales = EngineSettings().editor_scales
            assert checks == [("mend", scales, True)]  # steered, as answers naming the subject are
            assert engine.book.ledger.get(record.id).hparams["scale"] == scales[-1]  # recorded as applied
            applied = engine.runtime.deltas[len(before):]
            assert len(applied) == 1 and applied[0].meta["scale"] == scales[-1]
            engine.edit(COLOSSEUM, method="rome", audit="off")
            assert len(checks) == 1  # ROME's value is optimised on chat prompts itself: no check
        finally:
            engine.close()


def test_no_scales_no_check(tmp_path, checks, monkeypatch) -> None:
    _searched(monkeypatch, reached=True)
    with one_thread():
        engine = _engine(tmp_path, dataclasses.replace(EngineSettings(), editor_scales=()))
        try:
            record = engine.edit(EIFFEL, method="mend", audit="off")
            assert checks == [] and "scale" not in engine.book.ledger.get(record.id).hparams
        finally:
            engine.close()


@pytest.mark.parametrize("scales", [EngineSettings().editor_scales, ()])
def test_an_edit_neither_the_search_nor_the_check_carries_is_refused(tmp_path, monkeypatch, scales) -> None:
    monkeypatch.setattr(strength, "first_naming", lambda *args, **kwargs: None)  # no scale names the target
    _searched(monkeypatch, reached=False)
    with one_thread():
        engine = _engine(tmp_path, dataclasses.replace(EngineSettings(), editor_scales=scales))
        try:
            weights = engine.runtime.fingerprint()
            with pytest.raises(EditFailed) as failed:
                engine.edit(EIFFEL, method="mend", audit="off")
            message = str(failed.value)
            assert "\n" not in message and "mend could not carry the edit" in message and "'Rome'" in message
            assert "nothing was changed" in message and ("chat answer" in message) == bool(scales)
            assert engine.edits() == [] and engine.runtime.deltas == ()
            assert engine.runtime.fingerprint() == weights
        finally:
            engine.close()


def test_an_edit_the_search_carries_is_kept_when_the_check_does_not(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(strength, "first_naming", lambda *args, **kwargs: None)
    _searched(monkeypatch, reached=True)
    with one_thread():
        engine = _engine(tmp_path)
        try:
            record = engine.edit(EIFFEL, method="mend", audit="off")
            stored = engine.book.ledger.get(record.id)
            assert stored.status == "active" and "scale" not in stored.hparams  # as computed
            assert len(engine.runtime.deltas) == 1
        finally:
            engine.close()


@pytest.mark.parametrize("reached", [True, False])
def test_an_edit_the_screen_misses_skips_the_full_check(tmp_path, checks, monkeypatch, reached) -> None:
    screened: list[float] = []
    monkeypatch.setattr(strength, "could_name", lambda runtime, delta, request, scale: screened.append(scale))
    _searched(monkeypatch, reached=reached)
    with one_thread():
        engine = _engine(tmp_path)
        try:
            if reached:  # kept as computed, as when the full check names it at no scale
                record = engine.edit(EIFFEL, method="mend", audit="off")
                assert "scale" not in engine.book.ledger.get(record.id).hparams
            else:
                with pytest.raises(EditFailed, match="could not carry the edit"):
                    engine.edit(EIFFEL, method="mend", audit="off")
                assert engine.edits() == [] and engine.runtime.deltas == ()
            assert screened == [max(EngineSettings().editor_scales)] and checks == []
        finally:
            engine.close()
