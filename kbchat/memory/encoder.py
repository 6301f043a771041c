"""A sentence-transformers folder run with plain transformers: tokenizer → encoder → pooling.

`sentence_transformers` imports scikit-learn and much more (~2 s of a process start, most of the time
to a first answer); the packaged all-MiniLM-L6-v2 is a BERT encoder, mean pooling and L2
normalisation, which this module computes directly with the same vectors (tested against
`SentenceTransformer` to 1e-5). Folders with other modules are not read here (`read_pipeline` returns
None) and the caller falls back to `sentence_transformers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The module types this encoder implements; anything else in modules.json means "not ours".
_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


@dataclass(frozen=True)
class Pipeline:
    """What a sentence-transformers folder asks for, in the subset this module implements."""

    pooling: str  # "mean" | "cls"
    max_length: int  # tokens kept per text (sentence_bert_config's max_seq_length)
    dim: int


def read_pipeline(folder: Path) -> Pipeline | None:
    """The folder's pipeline when it is Transformer → Pooling (mean or cls) [→ Normalize], else None."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        types = [m["type"] for m in modules]
        if types not in ([_TRANSFORMER, _POOLING], [_TRANSFORMER, _POOLING, _NORMALIZE]) or modules[0]["path"]:
            return None
        pooling = json.loads((folder / modules[1]["path"] / "config.json").read_text(encoding="utf-8"))
        modes = [mode for key, mode in _POOLING_MODES.items() if pooling.get(key)]
        others = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v and k not in _POOLING_MODES]
        if len(modes) != 1 or others:
            return None
        bert = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        if bert.get("do_lower_case"):
            return None
        return Pipeline(modes[0], int(bert.get("max_seq_length", 512)), int(pooling["word_embedding_dimension"]))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


class SentenceEncoder:
    """Encodes texts as sentence-transformers would for a `Pipeline` folder (vectors not yet normalised)."""

    def __init__(self, folder: Path, pipeline: Pipeline, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        self.pipeline = pipeline
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model: Any = AutoModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()

    def get_embedding_dimension(self) -> int:
        return self.pipeline.dim

    def encode(self, texts: list[str], batch_size: int = 64, **_: Any) -> np.ndarray:
        """(len(texts), dim) float32, pooled as the folder says."""
        import torch  # here, not at the top: `kbchat.memory` stays light for callers that never embed

        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                   max_length=self.pipeline.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state  # (b, t, dim)
            if self.pipeline.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (b, dim)
            out.append(pooled.float().cpu().numpy())
        return np.concatenate(out, axis=0)
