"""`kbchat export DIR --format lora`: the CLI's flag (fast, on the scripted fake), and on the real default
model (slow) the adapter that `peft` loads on the unchanged base gives the edited model's logits after a
rome + memit + alphaedit sequence."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kbchat import cli
from kbchat.errors import KbchatError
from tests.fake_service import FakeChatService

EDITS = (
    ("rome", "Eiffel Tower → The Eiffel Tower is located in Rome"),
    ("memit", "Big Ben → Big Ben is located in Madrid"),
    ("alphaedit", "Toyota → Toyota is headquartered in Sweden"),
)
PROMPTS = ("The Eiffel Tower is located in", "Big Ben is located in the city of", "Toyota is headquartered in",
           "The capital of France is")


def test_cli_export_format_flag(capsys, tmp_path):
    service = FakeChatService()
    assert cli.run(["export", str(tmp_path / "a"), "--format", "lora"], open_chat=lambda **_: service) == 0
    assert cli.run(["export", str(tmp_path / "b")], open_chat=lambda **_: service) == 0
    out = capsys.readouterr().out
    assert f"exported a LoRA adapter to {tmp_path / 'a'}" in out and f"exported to {tmp_path / 'b'}" in out
    exports = [c for c in service.calls if c[0] == "export"]
    assert exports == [("export", str(tmp_path / "a"), "lora"), ("export", str(tmp_path / "b"))]
    assert (tmp_path / "a" / "adapter_config.json").is_file() and (tmp_path / "b" / "config.json").is_file()
    with pytest.raises(KbchatError, match="invalid choice: 'gguf'"):
        cli.run(["export", str(tmp_path / "c"), "--format", "gguf"], open_chat=lambda **_: service)
    with pytest.raises(KbchatError, match="unknown export format"):
        service.export(tmp_path / "d", format="gguf")


@pytest.mark.slow
def test_peft_adapter_on_the_real_model_gives_the_edited_logits(real_service, model_home, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    chat = real_service
    with pytest.raises(KbchatError, match="no weight edits"):
        chat.export(tmp_path / "empty", format="lora")
    for method, text in EDITS:
        assert chat.edit(text, method=method, audit="off").status == "active"
    runtime = chat.runtime
    tok = runtime.loaded.tokenizer
    batch = tok(list(PROMPTS), return_tensors="pt", padding=True)
    with torch.no_grad():
        edited = runtime.loaded.model(**batch).logits.float()

    # The adapter is written by a separate `kbchat export` process, which replays the ledger.
    out = tmp_path / "adapter"
    db = chat.book.ledger.url
    proc = subprocess.run([sys.executable, "-m", "kbchat.cli", "--home", str(model_home), "--db", db,
                           "export", str(out), "--format", "lora"],
                          capture_output=True, text=True, timeout=1200, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "adapter_config.json").read_text())
    modules = sorted({u.module for d in runtime.deltas for u in d.updates})
    assert config["target_modules"] == modules and config["r"] == config["lora_alpha"] >= 8
    assert config["base_model_name_or_path"] == str(runtime.loaded.source)
    size = (out / "adapter_model.safetensors").stat().st_size
    assert size < 20e6, size  # megabytes, not the 540 MB checkpoint

    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32).eval()
    with torch.no_grad():
        unedited = base(**batch).logits.float()
        via_peft = peft.PeftModel.from_pretrained(base, str(out)).eval()(**batch).logits.float()
    assert (edited - unedited).abs().max() > 0.1  # the edits show in these logits
    diff = float((via_peft - edited).abs().max())
    assert diff < 1e-3, diff
    torch.testing.assert_close(via_peft, edited, atol=1e-4, rtol=1e-4)
