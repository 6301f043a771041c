"""kbchat: a terminal chat assistant whose knowledge you can correct in conversation."""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["LocalEngine"]

if TYPE_CHECKING:
    from kbchat.engine.local import LocalEngine


def __getattr__(name: str):
    # Lazy: `import kbchat` (the CLI's parser, the TUI's fakes) must not pay for torch/transformers.
    if name == "LocalEngine":
        from kbchat.engine.local import LocalEngine

        return LocalEngine
    raise AttributeError(name)
