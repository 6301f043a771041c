"""Where the app looks for trained editors (MEND, InstructEdit), found by the model's fingerprint.

Editors a user trains (`kbchat train-editor`) go to `<data dir>/editors/`, searched first. The editors
shipped for the default model live in the library (`methods/mend/editors/`, `SHIPPED`, with the
`README.md` on how they were made), which `methods.mend` searches last on every call by itself.
"""

from __future__ import annotations

from pathlib import Path

from methods.mend.checkpoint import SHIPPED

__all__ = ["SHIPPED", "editor_dirs"]


def editor_dirs(home: Path) -> tuple[Path, ...]:
    """The user's editor folders, searched before the shipped ones (which the library adds itself)."""
    return (home / "editors",)
