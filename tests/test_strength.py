"""serac's strength check: the smallest scale whose patched answer to the relation's question names
the new object is kept, every trial patch is removed, and the stored patch is the one kept."""

from __future__ import annotations

import torch

from kbchat.engine.strength import check_prompt, could_name, first_naming, strengthen
from methods import Delta, EditRequest, Update

REQUEST = EditRequest("Jaidev", "{} died at", "Dresden", "Mumbai")


def delta() -> Delta:
    return Delta("rome", (Update("m", torch.ones(2, 1), torch.ones(3, 1)),), {"method": "rome"})


class Runtime:
    """Answers with the target once the selected patch is at least `needed` times the computed one."""

    def __init__(self, needed: float | None) -> None:
        self.needed = needed
        self.patches: dict = {}
        self.asked: list[tuple] = []

    def add_patch(self, key, d: Delta) -> None:
        self.patches[key] = d

    def remove_patch(self, key) -> None:
        del self.patches[key]

    def generate(self, prompt, patches, limit, *, names=(), targets=(), steer=None):
        scale = self.patches[patches[0]].meta.get("scale", 1.0)
        self.asked.append((prompt.messages[-1]["content"], scale, names, targets))
        self.steered = getattr(self, "steered", []) + [steer is not None]
        yield "Jaidev died in Dresden." if self.needed is not None and scale >= self.needed else "The answer is: Jaidev"


def test_the_smallest_scale_that_works_is_kept():
    runtime = Runtime(needed=1.5)
    kept = strengthen(runtime, delta(), REQUEST, (1.0, 1.5, 2.0))
    assert kept.meta["scale"] == 1.5 and torch.equal(kept.updates[0].left, 1.5 * torch.ones(2, 1))
    assert [a[1] for a in runtime.asked] == [1.0, 1.5]  # stops at the first that works
    question, _, names, targets = runtime.asked[0]
    assert question == "Where did Jaidev die?" and names == ("Jaidev",) and targets == ("Dresden",)
    assert runtime.patches == {}  # no trial patch is left behind


def test_a_patch_that_works_at_once_or_never_is_kept_as_computed():
    computed = delta()
    assert strengthen(Runtime(needed=1.0), computed, REQUEST, (1.0, 1.5, 2.0)) is computed
    runtime = Runtime(needed=None)
    assert strengthen(runtime, computed, REQUEST, (1.0, 1.5, 2.0)) is computed
    assert len(runtime.asked) == 3 and runtime.patches == {}
    assert strengthen(Runtime(needed=1.0), computed, REQUEST, ()) is computed


def test_first_naming_says_when_no_scale_names_the_target():
    """What a learned editor's refusal rests on: None, not the computed delta, when no scale works."""
    assert first_naming(Runtime(needed=None), delta(), REQUEST, (1.0, 1.5, 2.0)) is None
    assert first_naming(Runtime(needed=1.0), delta(), REQUEST, ()) is None
    assert first_naming(Runtime(needed=2.0), delta(), REQUEST, (1.0, 1.5, 2.0)).meta["scale"] == 2.0


class Worded(Runtime):
    """Names the target for the relation's first question at any scale, for its others from `needed` on."""

    def generate(self, prompt, patches, limit, *, names=(), targets=(), steer=None):
        scale = self.patches[patches[0]].meta.get("scale", 1.0)
        question = prompt.messages[-1]["content"]
        self.asked.append((question, scale, names, targets))
        first = question == "Where did Jaidev die?"
        yield "Jaidev died in Dresden." if first or scale >= self.needed else "He died in Mumbai."


def test_checking_more_wordings_keeps_a_scale_that_works_for_all():
    assert strengthen(Worded(needed=1.5), delta(), REQUEST, (0.5, 1.0, 1.5)).meta["scale"] == 0.5
    runtime = Worded(needed=1.5)
    kept = strengthen(runtime, delta(), REQUEST, (0.5, 1.0, 1.5), wordings=2)
    assert kept.meta["scale"] == 1.5 and runtime.patches == {}
    assert [(q == "Where did Jaidev die?", scale) for q, scale, *_ in runtime.asked] == \
        [(True, 0.5), (False, 0.5), (True, 1.0), (False, 1.0), (True, 1.5), (False, 1.5)]


class Conversation(Runtime):
    """Names the target on a direct question from scale 1, in a follow-up (the subject only "it",
    named in an earlier turn) only from scale `needed`; records each prompt's messages."""

    def generate(self, prompt, patches, limit, *, names=(), targets=(), steer=None):
        scale = self.patches[patches[0]].meta.get("scale", 1.0)
        self.asked.append((prompt.messages, scale))
        last = prompt.messages[-1]["content"]
        if last.startswith("What do you know"):
            yield "Jaidev was an Indian composer."
        elif "Jaidev" in last:
            yield "Jaidev died in Dresden." if scale >= 1.0 else "He died in Mumbai."
        else:
            yield "He died in Dresden." if scale >= self.needed else "He died in Mumbai."


def test_the_follow_up_check_keeps_a_scale_that_also_works_in_conversation():
    assert strengthen(Conversation(needed=2.0), delta(), REQUEST, (0.5, 1.0, 2.0)).meta.get("scale", 1.0) == 1.0
    runtime = Conversation(needed=2.0)
    kept = strengthen(runtime, delta(), REQUEST, (0.5, 1.0, 2.0), "Jaidev died at Dresden.", follow_up=True)
    assert kept.meta["scale"] == 2.0 and runtime.patches == {}
    follow_up = runtime.asked[-1][0]  # the last prompt: the follow-up at scale 2
    assert [m["role"] for m in follow_up] == ["system", "user", "assistant", "user"]
    assert follow_up[2]["content"] == "Jaidev was an Indian composer."  # the opener's own patched answer
    assert follow_up[3]["content"] == "Where did it die?" and "Jaidev" in follow_up[1]["content"]
    assert '"Jaidev died at Dresden."' in follow_up[0]["content"]


class Pieces(Runtime):
    """Answers piece by piece, counting the pieces taken: the opener "Jaidev was a composer from
    Dresdenia." (a word the target starts), the questions "He died in Dresden. Later ..."."""

    def __init__(self) -> None:
        super().__init__(needed=None)
        self.taken: list[int] = []

    def generate(self, prompt, patches, limit, *, names=(), targets=(), steer=None):
        opener = prompt.messages[-1]["content"].startswith("What do you know")
        pieces = ["Jaidev was", " a composer", " from", " Dres", "denia", "."] if opener else \
            ["He died", " in", " Dres", "den", ".", " Later", " he", " wrote", "."]
        self.taken.append(0)
        for piece in pieces:
            self.taken[-1] += 1
            yield piece


def test_the_check_stops_an_answer_once_it_names_the_target():
    runtime = Pieces()
    kept = strengthen(runtime, delta(), REQUEST, (0.5, 1.0), "Jaidev died at Dresden.", follow_up=True)
    assert kept.meta["scale"] == 0.5
    # the question stops after "." settles "Dresden" as a whole word; the opener (which the follow-up
    # reads) is generated whole, "Dresdenia" not taken for the target; then the follow-up stops too
    assert runtime.taken == [5, 6, 5] and runtime.patches == {}


def test_the_check_asks_as_the_planner_would():
    quoted = check_prompt(REQUEST, "Jaidev died at Dresden.")
    assert quoted.messages[0]["role"] == "system" and '"Jaidev died at Dresden."' in quoted.messages[0]["content"]
    assert check_prompt(REQUEST, None).messages == ({"role": "user", "content": "Where did Jaidev die?"},)


def test_scaled_delta_leaves_the_original_alone():
    computed = delta()
    bigger = computed.scaled(2.0)
    assert torch.equal(computed.updates[0].left, torch.ones(2, 1)) and "scale" not in computed.meta
    assert torch.equal(bigger.updates[0].matrix(), 2 * computed.updates[0].matrix())
    assert Delta.from_bytes(bigger.to_bytes()).meta["scale"] == 2.0


def test_serac_with_own_answers_keeps_the_unedited_chat_answer(tiny_engine, monkeypatch) -> None:
    """With `serac_own_answer`, serac's ROME value is computed keeping the unedited model's chat answer to
    the relation's question (the fact it states left free); without it, no answer is passed."""
    from dataclasses import replace

    from kbchat.audit.relations import questions
    from kbchat.runtime.decoding import chat_text
    from methods.own_answer import OwnAnswer

    pipeline = tiny_engine.pipeline
    seen = []
    compute = pipeline.compute

    def spy(method, requests, progress, hparams, prior=(), answers=()):
        seen.append(answers)
        return compute(method, requests, progress, hparams, prior, answers)

    monkeypatch.setattr(pipeline, "compute", spy)
    tiny_engine.edit("Eiffel Tower → The Eiffel Tower is located in Rome", method="serac", audit="off")
    monkeypatch.setattr(pipeline, "settings", replace(pipeline.settings, serac_own_answer=True))
    record = tiny_engine.edit("Big Ben → Big Ben is located in Cairo", method="serac", audit="off")
    assert seen[0] == [[]]
    (own,) = seen[1][0]
    question = {"role": "user", "content": questions(EditRequest("Big Ben", "{} is located in", "Cairo"))[0]}
    assert isinstance(own, OwnAnswer) and own.answer
    assert own.prompt == chat_text(tiny_engine.runtime.loaded.tokenizer, [question])
    assert own.fact == record.target_true


def test_the_screen_asks_once_unsteered_at_the_scale_given():
    for needed, named in ((1.5, True), (None, False), (3.0, False)):
        runtime = Runtime(needed)
        assert could_name(runtime, delta(), REQUEST, 2.0) is named
        assert [a[1] for a in runtime.asked] == [2.0] and runtime.steered == [False] and runtime.patches == {}
