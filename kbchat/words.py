"""The one word normaliser: how scope matching and evaluation compare words."""

from __future__ import annotations

import re
import unicodedata

_WORD_RE = re.compile(r"[^\W_]+")


def normalise_words(text: str) -> list[str]:
    """Casefolded, accent-free word tokens, punctuation dropped: "Québec City's" -> ["quebec", "city", "s"]."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _WORD_RE.findall(plain.casefold())
