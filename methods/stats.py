"""Second moments E[k k^T] of the inputs to MLP output projections, over real text.

ROME whitens its key with C^-1, MEMIT regularises with lambda*C, AlphaEdit projects onto C's null
space: one statistic serves all three. A `StatsCache` object owns the results (in memory and on disk
keyed by model fingerprint, module and sample count); there is no module-level cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from methods.corpus import wikipedia_texts
from methods.hooks import Trace
from methods.hparams import StatsHParams
from methods.progress import ProgressFn, silent

T = TypeVar("T")


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter and buffer name and its bytes: identifies exact weights."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class StatsCache:
    """Computes and keeps second-moment matrices; reuse one object for a model's lifetime.

    `root=None` keeps results in memory only. Files are verified on load (shape, sample count,
    content hash); a corrupt or mismatched file is recomputed and rewritten.
    """

    def __init__(self, root: Path | None = None, corpus: Callable[[], Iterable[str]] = wikipedia_texts) -> None:
        self.root = Path(root) if root else None
        self.corpus = corpus
        self._memory: dict[tuple[str, str, int], torch.Tensor] = {}
        self._derived: dict[tuple, Any] = {}
        self.computed: list[str] = []  # modules computed (not loaded) by this object: tests read it

    def derived(self, key: tuple, make: Callable[[], T]) -> T:
        """A value computed from the statistics (e.g. AlphaEdit's null-space projector), made once per
        `key` for the lifetime of this object: `key` must name everything `make` depends on."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    def second_moments(
        self,
        model: nn.Module,
        tokenizer,
        modules: Sequence[str],
        spec: StatsHParams | None = None,
        *,
        model_id: str | None = None,
        progress: ProgressFn = silent,
    ) -> dict[str, torch.Tensor]:
        """{module: C (in, in) float32 on the model's device}, C = mean over tokens of x x^T."""
        spec = spec or StatsHParams()
        model_id = model_id or model_fingerprint(model)
        found: dict[str, torch.Tensor] = {}
        missing = []
        for name in modules:
            key = (model_id, name, spec.n_tokens)
            if key in self._memory:
                found[name] = self._memory[key]
            elif (loaded := self._load(model, key)) is not None:
                found[name] = self._memory[key] = loaded
            else:
                missing.append(name)
        if missing:
            computed = collect_second_moments(model, tokenizer, missing, self.corpus(), spec, progress)
            for name, c in computed.items():
                key = (model_id, name, spec.n_tokens)
                self._memory[key] = found[name] = c
                self._save(key, c)
                self.computed.append(name)
        device = next(model.parameters()).device
        return {name: found[name].to(device) for name in modules}

    def path(self, key: tuple[str, str, int]) -> Path | None:
        if self.root is None:
            return None
        model_id, name, n = key
        return self.root / model_id[:16] / f"{name}.{n}.safetensors"

    def _save(self, key: tuple[str, str, int], c: torch.Tensor) -> None:
        path = self.path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")  # two processes computing at once: each its own
        meta = {"model_id": key[0], "module": key[1], "n_tokens": str(key[2]), "sha256": _tensor_hash(c)}
        save_file({"mom2": c.cpu().contiguous()}, str(tmp), metadata=meta)
        tmp.replace(path)  # atomic: a crash never leaves a half-written cache file under the real name

    def _load(self, model: nn.Module, key: tuple[str, str, int]) -> torch.Tensor | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            c = load_file(str(path))["mom2"]
            meta = _metadata(path)
        except Exception:  # any unreadable file is treated as absent and rebuilt
            return None
        d_in = _in_features(model, key[1])
        ok = (
            meta.get("model_id") == key[0]
            and meta.get("module") == key[1]
            and meta.get("n_tokens") == str(key[2])
            and meta.get("sha256") == _tensor_hash(c)
            and tuple(c.shape) == (d_in, d_in)
        )
        return c if ok else None


@torch.no_grad()
def collect_second_moments(
    model: nn.Module,
    tokenizer,
    modules: Sequence[str],
    texts: Iterable[str],
    spec: StatsHParams,
    progress: ProgressFn = silent,
) -> dict[str, torch.Tensor]:
    """One pass over `texts` (stopping after the deepest module) accumulating x x^T per module."""
    device = next(model.parameters()).device
    dims = {name: _in_features(model, name) for name in modules}
    sums = {name: torch.zeros(d, d, dtype=torch.float64, device=device) for name, d in dims.items()}
    order = sorted(modules, key=_depth_key)
    seen = 0
    for batch in _token_batches(tokenizer, texts, spec):
        if seen >= spec.n_tokens:
            break
        batch = batch.to(device)
        with Trace(model, order, retain_input=True, retain_output=False, stop=True) as trace:
            model(input_ids=batch, use_cache=False)
        for name in modules:
            x = trace.inputs[name].reshape(-1, dims[name]).double()  # (B*T, in)
            sums[name] += x.T @ x
        seen += batch.numel()
        progress("statistics", min(seen, spec.n_tokens), spec.n_tokens)
    if seen == 0:
        raise ValueError("the statistics corpus yielded no text")
    return {name: (s / seen).float() for name, s in sums.items()}


def _token_batches(tokenizer, texts: Iterable[str], spec: StatsHParams):
    """Fixed-length token windows, packed across documents so no padding is needed."""
    buffer: list[int] = []
    rows: list[list[int]] = []
    for text in texts:
        buffer.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        while len(buffer) >= spec.seq_len:
            rows.append(buffer[: spec.seq_len])
            buffer = buffer[spec.seq_len :]
            if len(rows) == spec.batch_size:
                yield torch.tensor(rows)
                rows = []
    if rows:
        yield torch.tensor(rows)


def _in_features(model: nn.Module, name: str) -> int:
    from methods.delta import weight_of  # local: delta imports hooks, which this module also uses

    return weight_of(model.get_submodule(name)).shape[1]


def _depth_key(name: str) -> tuple[int, str]:
    digits = [int(p) for p in name.split(".") if p.isdigit()]
    return (digits[0] if digits else 0, name)


def _tensor_hash(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _metadata(path: Path) -> dict[str, str]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)).get("__metadata__", {})
