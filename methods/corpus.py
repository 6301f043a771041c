"""Real text for second-moment statistics: the Wikipedia extract that the gensim wheel ships.

The file is located without importing gensim (its import is slow and pulls scipy). Any iterable of
strings can replace it (`StatsCache(corpus=...)`).
"""

from __future__ import annotations

import bz2
import importlib.util
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

_MARKUP = [
    (re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"\{\{[^{}]*\}\}"), ""),  # templates; applied twice below for one level of nesting
    (re.compile(r"\{\|.*?\|\}", re.S), ""),  # tables
    (re.compile(r"\[\[(?:File|Image|Category):[^\]]*\]\]"), ""),
    (re.compile(r"\[\[[^\]|]*\|([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[\[([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^[=*#:;|!].*$", re.M), ""),  # headings, lists, table rows
    (re.compile(r"\n{2,}"), "\n"),
]


class CorpusNotFound(FileNotFoundError):
    pass


def wikipedia_path() -> Path:
    """The bz2 Wikipedia extract inside the installed gensim wheel."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusNotFound("statistics need real text: `pip install --no-deps gensim` (its wheel ships Wikipedia)")
    path = Path(next(iter(spec.submodule_search_locations))) / WIKI_FILE
    if not path.is_file():
        raise CorpusNotFound(f"the gensim wheel has no {WIKI_FILE}")
    return path


def clean_wikitext(text: str) -> str:
    """Plain prose from MediaWiki markup (crude but enough for activation statistics)."""
    for pattern, repl in _MARKUP[:3]:
        text = pattern.sub(repl, text)
    text = _MARKUP[2][0].sub("", text)
    for pattern, repl in _MARKUP[3:]:
        text = pattern.sub(repl, text)
    return text.strip()


def wikipedia_texts(path: Path | None = None, min_chars: int = 200) -> Iterator[str]:
    """Article texts, in file order, markup stripped; redirects and stubs skipped."""
    with bz2.open(path or wikipedia_path(), "rb") as f:
        for _, elem in ET.iterparse(f):
            if elem.tag.endswith("}text") and elem.text and not elem.text.startswith("#REDIRECT"):
                text = clean_wikitext(elem.text)
                if len(text) >= min_chars:
                    yield text
            if elem.tag.endswith("}page"):
                elem.clear()
