"""kbchat: a terminal chat assistant whose knowledge you can correct in conversation."""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["KnowledgeChat"]

if TYPE_CHECKING:
    from kbchat.facade import KnowledgeChat


def __getattr__(name: str):
    # Lazy: `import kbchat` (the CLI's parser, the TUI's fakes) must not pay for torch/transformers.
    if name == "KnowledgeChat":
        from kbchat.facade import KnowledgeChat

        return KnowledgeChat
    raise AttributeError(name)
