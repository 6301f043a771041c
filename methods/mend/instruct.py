"""InstructEdit (Zhang et al. 2024): one editor for several tasks, each edit input behind an instruction.

An instruction names the task and describes it in one sentence; each task has several wordings, the
last of which training never uses (it tests whether the editor generalises to a new wording).
Locality inputs are never wrapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """A kind of edit and its one-sentence descriptions; `wordings[-1]` is held out of training."""

    name: str
    wordings: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.wordings) < 2:
            raise ValueError(f"task {self.name!r} needs at least two wordings (one is held out)")

    @property
    def training_wordings(self) -> range:
        return range(len(self.wordings) - 1)

    @property
    def held_out_wording(self) -> int:
        return len(self.wordings) - 1


COUNTERFACT = Task("counterfactual completion", (
    "Complete the sentence so that it states the new fact.",
    "Finish this statement with the updated piece of knowledge.",
    "Continue the text with the fact as it is now.",
    "Write the end of the sentence according to the revised fact.",
))
QUESTION_ANSWERING = Task("question answering", (
    "Answer the question with the new fact.",
    "Reply to this question using the updated knowledge.",
    "Give the answer that the revised fact implies.",
    "Respond to the question according to the corrected information.",
))
CHAT = Task("chat", (
    "Reply to the user as an assistant who knows the new fact.",
    "Answer the user's message in the conversation using the updated knowledge.",
    "As the assistant, respond with the revised fact.",
    "Continue the conversation as an assistant aware of the corrected information.",
))
DEFAULT_TASKS = (COUNTERFACT, QUESTION_ANSWERING, CHAT)


def instruction(task: Task, wording: int) -> str:
    """The instruction line: the task's name and one wording of its description."""
    return f"Task: {task.name}. {task.wordings[wording]}"


def wrap(task: Task, wording: int, text: str) -> str:
    """`text` behind the instruction, on its own line."""
    return f"{instruction(task, wording)}\n{text}"


def find_task(tasks: Sequence[Task], name: str) -> Task:
    for task in tasks:
        if task.name == name:
            return task
    raise ValueError(f"no task {name!r}; known: {', '.join(t.name for t in tasks)}")


def guess_task(tasks: Sequence[Task], prompt: str, chat_template: bool) -> Task:
    """The task an edit prompt most likely belongs to: chat when it is chat-formatted, question
    answering when it ends with '?', else counterfactual completion (when those tasks exist)."""
    names = [t.name for t in tasks]
    if chat_template and CHAT.name in names:
        return find_task(tasks, CHAT.name)
    if prompt.rstrip().endswith("?") and QUESTION_ANSWERING.name in names:
        return find_task(tasks, QUESTION_ANSWERING.name)
    return find_task(tasks, COUNTERFACT.name) if COUNTERFACT.name in names else tasks[0]
