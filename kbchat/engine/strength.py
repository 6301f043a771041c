"""How strong serac's in-model patch is: checked on the relation's chat question when the edit is made.

ROME's value is optimised on raw prompts and chat-formatted ones, but a chat answer can still miss
the new object ("Where did Jaidev die?" -> 'The answer is: "Jaidev"'). The patch acts only on
in-scope questions, so making it larger costs nothing elsewhere; it can cost the answer's wording,
hence the smallest scale that works is kept. The check is the answer a user asking the relation's
question would get (the same prompt, name guard and rest after the new object as `LocalEngine.ask`),
so reliability on that question is partly this check's doing; lower case and typos are not checked
here. Optionally (`follow_up`) the check also asks the relation's question as a follow-up, the subject
named only in an earlier turn ("What do you know about X?" … "Where is it located?"), where a patch
that is just strong enough for the direct question often falls short.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kbchat.audit.relations import questions
from kbchat.evaluation.metrics import mentions
from kbchat.memory.active import facts_message_for
from kbchat.runtime import ModelRuntime, Prompt
from kbchat.runtime.steering import Steer
from methods import Delta, EditRequest

CHECK_TOKENS = 48  # as long as a chat benchmark answer: long enough to reach the object
OPENER = "What do you know about {}?"  # the follow-up check's first turn: names the subject only


def check_prompt(request: EditRequest, fact: str | None, which: int = 0) -> Prompt:
    """The chat prompt of the relation's `which`-th question (one it has) as the planner builds it
    with this edit in scope: `fact` ("The Eiffel Tower is located in Rome.") quoted in a system
    message, when facts are quoted."""
    question = {"role": "user", "content": questions(request)[which]}
    return Prompt(messages=(facts_message_for([fact]), question) if fact else (question,))


def _answer(runtime: ModelRuntime, prompt: Prompt, key: tuple, request: EditRequest, steer: Steer | None,
            until_named: bool = False) -> str:
    """The patched answer to `prompt`; with `until_named`, cut once its whole words name the target
    (the check's verdict is then settled, and the rest of the answer is not worth generating)."""
    pieces = runtime.generate(prompt, (key,), CHECK_TOKENS, names=(request.subject,),
                              targets=(request.target,), steer=steer)
    text = ""
    try:
        for piece in pieces:
            text += piece
            if until_named and mentions(WORD_TAIL.sub("", text), request.target):
                break
    finally:
        pieces.close()  # on this thread: the generator holds the runtime's read lock
    return text


WORD_TAIL = re.compile(r"[^\W_]+$")  # a last word that the next piece may still lengthen ("Rome" -> "Romeo")


def follow_up_prompt(runtime: ModelRuntime, key: tuple, request: EditRequest, fact: str | None,
                     steer: Steer | None = None) -> Prompt:
    """The relation's question asked after an opener about the subject, the subject then called "it";
    the opener's answer is generated with the patch `key` active, as the user would have seen it."""
    system = (facts_message_for([fact]),) if fact else ()
    opener = {"role": "user", "content": OPENER.format(request.subject)}
    first = _answer(runtime, Prompt(messages=(*system, opener)), key, request, steer)
    question = questions(request)[0].replace(request.subject, "it")
    return Prompt(messages=(*system, opener, {"role": "assistant", "content": first},
                            {"role": "user", "content": question}))


def _names_target(runtime: ModelRuntime, trial: Delta, request: EditRequest, prompts: Sequence[Prompt],
                  scale: float, fact: str | None = None, follow_up: bool = False, steer: Steer | None = None,
                  settle: bool = True) -> bool:
    """Whether every one of `prompts` (and with `follow_up` the follow-up conversation, `fact` quoted
    as in `check_prompt`), answered with `trial` patched in (and steered, `steer`, as the answers will be),
    names the request's target; with `settle`, each answer judged is cut once it does."""
    key = ("strength check", request.subject, scale)
    runtime.add_patch(key, trial)
    try:
        for prompt in prompts:  # stops at the first miss: a larger scale is tried next
            if not mentions(_answer(runtime, prompt, key, request, steer, until_named=settle), request.target):
                return False
        if not follow_up:
            return True
        conversation = follow_up_prompt(runtime, key, request, fact, steer)
        return mentions(_answer(runtime, conversation, key, request, steer, until_named=settle), request.target)
    finally:
        runtime.remove_patch(key)


def first_naming(runtime: ModelRuntime, delta: Delta, request: EditRequest, scales: Sequence[float],
                 fact: str | None = None, wordings: int = 1, follow_up: bool = False,
                 steer: Steer | None = None, settle: bool = True) -> Delta | None:
    """`delta` scaled by the first of `scales` whose patched answers to the relation's first
    `wordings` questions (and, with `follow_up`, to its first question asked as a follow-up) all name
    the request's target; None when none does. `settle` (a benchmark's switch): stop generating a
    judged answer once it names the target."""
    count = min(max(wordings, 1), len(questions(request)))
    prompts = [check_prompt(request, fact, i) for i in range(count)]
    for scale in scales:
        trial = delta if scale == 1.0 else delta.scaled(scale)
        if _names_target(runtime, trial, request, prompts, scale, fact, follow_up, steer, settle):
            return trial
    return None


def could_name(runtime: ModelRuntime, delta: Delta, request: EditRequest, scale: float) -> bool:
    """A quick screen before `first_naming` over scales up to `scale`: whether the plain patched
    answer to the relation's first question, `delta` at `scale`, names the request's target (cut once
    it does). Unsteered, it runs the model on one row per token where a steered check runs two and, on
    a miss, again for the fallback; an edit that even this misses is almost never named at a smaller
    scale (a steered answer that misses falls back to this same patched answer). On 16 CounterFact
    training records the screened check kept the full check's scale on all 16, in 2.9 CPU s against
    19.6 for the 12 edits no scale carried (bench/results/editor-check-mend.json)."""
    trial = delta if scale == 1.0 else delta.scaled(scale)
    return _names_target(runtime, trial, request, [check_prompt(request, None)], scale)


def screened_naming(runtime: ModelRuntime, delta: Delta, request: EditRequest, scales: Sequence[float],
                    steer: Steer | None = None) -> Delta | None:
    """`first_naming` over `scales` (steered, `steer`), run only when `could_name` at the largest
    scale passes: a learned editor's chat check. None when no scale names the target."""
    if not scales or not could_name(runtime, delta, request, max(scales)):
        return None
    return first_naming(runtime, delta, request, scales, steer=steer)


def strengthen(runtime: ModelRuntime, delta: Delta, request: EditRequest, scales: Sequence[float],
               fact: str | None = None, wordings: int = 1, follow_up: bool = False,
               steer: Steer | None = None, settle: bool = True) -> Delta:
    """`first_naming`'s delta, else `delta` itself (scale 1) when no scale names the target or `scales`
    is empty."""
    named = first_naming(runtime, delta, request, scales, fact, wordings, follow_up, steer, settle)
    return delta if named is None else named
