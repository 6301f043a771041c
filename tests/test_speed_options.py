"""The speed options of issue #15: the `dtype` setting (float32 or bfloat16 weights) and the decoder
giving the same greedy text as the plain HF `generate`. Tiny random Llama, one torch thread."""

from __future__ import annotations

import copy
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


# --- bfloat16 on a CPU: oneDNN set per forward pass (kbchat.runtime.onednn) ---------------------------


def _flags_seen(model) -> tuple[list[bool], object]:
    """Records oneDNN's switch as the first decoder layer sees it, once per pass."""
    seen: list[bool] = []
    handle = model.model.layers[0].register_forward_pre_hook(lambda *_: seen.append(torch._C._get_mkldnn_enabled()))
    return seen, handle


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_bfloat16_on_cpu_uses_native_gemv_for_one_token_steps_only(clean_env, tiny_folder, tmp_path):
    with one_thread():
        loaded = load_model(str(tiny_folder), tmp_path / "home", device="cpu", dtype="bfloat16")
        assert loaded.switch is not None
        seen, handle = _flags_seen(loaded.model)
        ids = chat_input_ids(loaded.tokenizer, [{"role": "user", "content": QUESTIONS[0]}], "cpu")
        text = greedy_text(loaded.model, loaded.tokenizer, ids, 6)
        handle.remove()
        assert seen[0] is True and len(seen) > 1 and not any(seen[1:])  # prefill on oneDNN, steps not
        assert torch._C._get_mkldnn_enabled()  # restored after every pass
        twin = copy.deepcopy(loaded.model)  # a working copy keeps the switch
        assert greedy_text(twin, loaded.tokenizer, ids, 6) == text
        loaded.switch.remove()
        assert greedy_text(loaded.model, loaded.tokenizer, ids, 6) == text  # the same tokens either way
        f32 = load_model(str(tiny_folder), tmp_path / "home", device="cpu", dtype="float32")
    assert f32.switch is None


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_the_switch_is_restored_and_released_when_a_pass_fails(clean_env, tiny_folder, tmp_path):
    import threading

    with one_thread():
        loaded = load_model(str(tiny_folder), tmp_path / "home", device="cpu", dtype="bfloat16")
        with pytest.raises(IndexError):
            loaded.model(input_ids=torch.tensor([[10 ** 6]]))  # a token id outside the vocabulary
        assert torch._C._get_mkldnn_enabled()
        other = threading.Thread(target=lambda: loaded.model(input_ids=torch.tensor([[3, 4]])))
        other.start()
        other.join(timeout=60)
    assert not other.is_alive()  # the failed pass let go of the process lock


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_passes_of_concurrent_answers_take_turns(clean_env, tiny_folder, tmp_path):
    import threading
    import time

    with one_thread():
        loaded = load_model(str(tiny_folder), tmp_path / "home", device="cpu", dtype="bfloat16")
        spans: list[tuple[float, float, bool]] = []

        def slow_layer(_module, _args):
            started = time.perf_counter()
            flag = torch._C._get_mkldnn_enabled()
            time.sleep(0.01)  # long enough for another thread to come in if it could
            spans.append((started, time.perf_counter(), flag == torch._C._get_mkldnn_enabled()))

        loaded.model.model.layers[0].register_forward_pre_hook(slow_layer)
        ids = [torch.tensor([[3, 4, 5]]), torch.tensor([[6]])]
        threads = [threading.Thread(target=lambda i=i: [loaded.model(input_ids=ids[i % 2]) for _ in range(5)])
                   for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    spans.sort()
    assert len(spans) == 20 and all(same for *_, same in spans)  # no pass saw the switch change under it
    ends, starts = [end for _, end, _ in spans[:-1]], [start for start, _, _ in spans[1:]]
    assert all(end <= start for end, start in zip(ends, starts, strict=True))  # no two passes overlapped
