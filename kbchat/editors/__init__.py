"""Trained editors (MEND, InstructEdit) shipped for the default model, found by the model's fingerprint.

Each `*.safetensors` here carries its kind, the model fingerprint it was trained for, the command and
data that made it and their hash (`README.md` beside them). Editors a user trains go to
`<data dir>/editors/`, searched as well.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).resolve().parent


def editor_dirs(home: Path) -> tuple[Path, ...]:
    """Where editors are looked for: the user's own first, then the shipped ones."""
    return (home / "editors", SHIPPED)
