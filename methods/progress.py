"""Progress reporting for long computations, through a callback (never print: it breaks a TUI)."""

from __future__ import annotations

from typing import Protocol


class ProgressFn(Protocol):
    def __call__(self, stage: str, step: int, total: int | None, loss: float | None = None) -> None: ...


def silent(stage: str, step: int, total: int | None, loss: float | None = None) -> None:
    """The default: report nothing."""
