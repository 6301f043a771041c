"""The speed options of issue #15: the `dtype` setting (float32 or bfloat16 weights) and the decoder
giving the same greedy text as the plain HF `generate`. Tiny random Llama, one torch thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kbchat.config import ConfigError, model_dtype, resolve
from kbchat.runtime.decoding import chat_input_ids, greedy_text
from kbchat.runtime.loading import load_model, pick_device
from tests.tiny_models import one_thread, tiny

QUESTIONS = ("Where is the Eiffel Tower?", "Tell me about the museum.", "Who lives in Chicago?")


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """The tiny Llama (with its chat template) saved as a Hugging Face folder."""
    model, tok = tiny("llama")
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_dtype_defaults_to_the_device_default(clean_env):
    assert model_dtype() is None
    assert pick_device("cpu").dtype == torch.float32
    assert resolve().settings["dtype"].source == "default"


def test_dtype_from_env_and_file(clean_env, monkeypatch):
    clean_env.write_text('dtype = "bfloat16"\n')
    assert model_dtype() == "bfloat16"
    assert resolve().settings["dtype"].source == "file"
    assert pick_device("cpu").dtype == torch.bfloat16
    monkeypatch.setenv("KBCHAT_DTYPE", "float32")
    assert model_dtype() == "float32"
    assert pick_device("cpu").dtype == torch.float32
    assert pick_device("cpu", "bfloat16").dtype == torch.bfloat16  # an explicit argument wins


@pytest.mark.parametrize("where", ["env", "file"])
def test_bad_dtype_is_one_line_config_error(clean_env, monkeypatch, where):
    if where == "env":
        monkeypatch.setenv("KBCHAT_DTYPE", "float16")
    else:
        clean_env.write_text('dtype = "float16"\n')
    for read in (model_dtype, resolve, lambda: pick_device("cpu")):
        with pytest.raises(ConfigError) as caught:
            read()
        message = str(caught.value)
        assert "\n" not in message
        assert "float16" in message and "float32, bfloat16" in message


def test_bfloat16_loaded_tiny_model_decodes(clean_env, tiny_folder, tmp_path):
    with one_thread():
        loaded = load_model(str(tiny_folder), tmp_path / "home", device="cpu", dtype="bfloat16")
        assert loaded.device.dtype == torch.bfloat16
        assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
        ids = chat_input_ids(loaded.tokenizer, [{"role": "user", "content": QUESTIONS[0]}], "cpu")
        steps = []
        handle = loaded.model.register_forward_pre_hook(lambda *_: steps.append(1))
        try:
            text = greedy_text(loaded.model, loaded.tokenizer, ids, 8)
        finally:
            handle.remove()
    assert isinstance(text, str)
    assert len(steps) >= 1


def test_env_dtype_reaches_load_model(clean_env, tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("KBCHAT_DTYPE", "bfloat16")
    with one_thread():
        loaded = load_model(str(tiny_folder), tmp_path / "home", device="cpu")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("question", QUESTIONS)
def test_our_greedy_text_equals_plain_generate(question):
    model, tok = tiny("llama")
    with one_thread(), torch.no_grad():
        ids = chat_input_ids(tok, [{"role": "user", "content": question}], "cpu")
        ours = greedy_text(model, tok, ids, 16)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16,
                             pad_token_id=tok.pad_token_id)
    plain = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    # stream_tokens holds back an incomplete multi-byte character at the very end (it never completes)
    assert ours == plain.removesuffix("\ufffd")
    assert out.shape[1] > ids.shape[1]  # something was generated
