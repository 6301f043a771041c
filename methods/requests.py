"""The unit of work of every method: one fact to write."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EditRequest:
    """Make `prompt` (which names `subject`) continue with `target`.

    `prompt` either contains the subject verbatim or a `{}` slot for it, as in ROME's data:
    EditRequest("Eiffel Tower", "The {} is located in", "Rome").
    """

    subject: str
    prompt: str
    target: str
    target_true: str | None = None

    def __post_init__(self) -> None:
        if not self.subject.strip():
            raise ValueError("EditRequest.subject is empty")
        if not self.target.strip():
            raise ValueError("EditRequest.target is empty")
        if "{}" not in self.prompt and self.subject not in self.prompt:
            raise ValueError(f"EditRequest.prompt {self.prompt!r} names neither {{}} nor the subject {self.subject!r}")

    @property
    def template(self) -> str:
        """The prompt with `{}` for the subject."""
        return self.prompt if "{}" in self.prompt else self.prompt.replace(self.subject, "{}", 1)

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.template.format(self.subject)
