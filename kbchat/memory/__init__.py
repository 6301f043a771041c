"""Memory edits: an embedder and a scope index that decides which edits a question is about."""

from kbchat.memory.calibration import SCOPE_THRESHOLD
from kbchat.memory.embedder import Embedder, default_model_path
from kbchat.memory.index import Hit, MemoryIndex, key_text_for, subject_key
from kbchat.words import normalise_words

__all__ = [
    "SCOPE_THRESHOLD",
    "Embedder",
    "Hit",
    "MemoryIndex",
    "default_model_path",
    "key_text_for",
    "normalise_words",
    "subject_key",
]
