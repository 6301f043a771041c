"""Steered decoding of serac answers (issue #12; experimental, `EngineSettings.serac_steer`).

A patched model words the whole answer, and the patch bends more than the fact: the framing ("The
original text refers to Singapore…"), names, the words after the object. Here the unpatched model
words the answer and the patched one writes only the new object. Both run side by side, as the two
rows of one batch, both fed every chosen token. Before the answer states one of the `targets`, each step
takes the patched model's token when it leads into a target (the answer then ends with a word-initial
start of one, or states it) and the unpatched model's otherwise; once a target is stated, only the
unpatched model runs. The names of the edited subjects are the unpatched model's, so they stay whole.

If the patched model never leads into a target where the unpatched model's answer goes, the answer is
the unedited one. So, with `Steer.fallback`, the answer is held back until it states a target; if its
first sentence ends (or the answer does) first, the usual patched answer is given instead
(`held_until_stated`). serac's strength check decodes the same way as the answers.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from kbchat.runtime.decoding import AnswerText, eos_ids, last_logits_only, left_pad
from kbchat.runtime.guard import partway, states


@dataclass(frozen=True)
class Steer:
    """Steered decoding switched on; the unpatched model reads the conversation without the messages
    in `without` (e.g. the system message quoting the edits' facts, whose framing it would copy)."""

    without: tuple[Mapping[str, str], ...] = ()
    fallback: bool = True  # the patched answer when the steered one's first sentence misses the targets


def within_name(text: str, names: Sequence[str]) -> bool:
    """Whether `text` ends inside one of `names`, past its first word ("…of Dehkhoda" in "Dehkhoda
    Dictionary"), written as the name is; a first word alone is not enough for one-word names, and a
    shorter prefix ("in" of "Inverness Castle") is no sign of the name being written."""
    for name in (n.strip() for n in names):
        first = len(name.split()[0]) if name else 0
        for k in range(len(name) - 1, max(first, 1) - 1, -1):
            if text.endswith(name[:k]) and (len(text) == k or not text[-k - 1].isalnum()):
                return True
    return False


def takes_lead(text: str, led: str, targets: Sequence[str], names: Sequence[str] = ()) -> bool:
    """Whether the patched model's token is taken after the answer `text`, `led` being the text with it:
    it leads into one of `targets`, and `text` is not inside one of the subjects' `names` (the
    unpatched model writes those whole: "The language of Dehkhoda Russian Dictionary" otherwise)."""
    return not within_name(text, names) and leads_into(led, targets)


def leads_into(text: str, targets: Sequence[str]) -> bool:
    """Whether `text` states one of `targets` or ends partway through one (a proper prefix of it that
    starts a word), ignoring case."""
    return states(text, targets) or partway(text, targets)


@torch.no_grad()
def steered_tokens(
    model: nn.Module,
    tokenizer,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    side_by_side: Callable[[], AbstractContextManager],
    unpatched: Callable[[], AbstractContextManager],
    targets: Sequence[str],
    cancel: threading.Event | None = None,
    stop_strings: Sequence[str] = (),
    clean_ids: torch.Tensor | None = None,
    names: Sequence[str] = (),
) -> Iterator[str]:
    """Greedy answer pieces for `input_ids` ((1, T)), the unpatched model reading `clean_ids` ((1, T');
    default `input_ids`). Both run as the two rows of one batch (on CPU a step of two rows costs little
    more than one): `side_by_side()` is a context in which row 0 is patched and row 1 not,
    `unpatched()` one without the patches, used once a target is stated and only row 1 goes on.
    `names`: the edited subjects, which the unpatched model writes (`takes_lead`); stops as
    `decoding.stream_tokens` does."""
    eos, last = eos_ids(model, tokenizer), last_logits_only(model)
    answer = AnswerText(tokenizer, stop_strings)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    step, mask = left_pad([input_ids, input_ids if clean_ids is None else clean_ids], pad)  # (2, T), (2, T)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (2, T): counted from each row's first real token
    past, both = None, True
    for _ in range(max_new_tokens):
        if cancel is not None and cancel.is_set():
            return
        with side_by_side() if both else unpatched():
            out = model(input_ids=step, attention_mask=mask, position_ids=positions, past_key_values=past,
                        use_cache=True, **last)
        past, token = out.past_key_values, int(out.logits[-1, -1].argmax())  # the unpatched row's
        if both:
            lead = int(out.logits[0, -1].argmax())
            if lead != token and lead not in eos and takes_lead(answer.text, _with(tokenizer, answer, lead),
                                                                 targets, names):
                token = lead
        if token in eos:
            break
        piece = answer.push(token)
        if piece:
            yield piece
        if answer.done:
            return
        if both and states(answer.text, targets):  # stated: only the unpatched model runs from here
            past.batch_select_indices(torch.tensor([1], device=mask.device))
            mask, positions, both = mask[1:], positions[1:], False
        step = torch.tensor([[token]] * len(mask), device=mask.device)  # (rows, 1)
        mask = torch.cat([mask, mask.new_ones((len(mask), 1))], dim=-1)  # (rows, T + 1)
        positions = positions[:, -1:] + 1  # (rows, 1)


def held_until_stated(steered: Iterator[str], fallback: Callable[[], Iterator[str]],
                      targets: Sequence[str]) -> Iterator[str]:
    """`steered`'s pieces, held back until they state one of `targets` and streamed from then on; if
    its first sentence ends, or it does, without one, `fallback()`'s pieces instead (`steered` is
    closed first)."""
    held: list[str] = []
    for piece in steered:
        held.append(piece)
        text = "".join(held)
        end = SENTENCE_END.search(text.lstrip())
        if states(text.lstrip()[:end.start() + 1] if end else text, targets):
            yield text
            yield from steered
            return
        if end:
            break
    steered.close()
    yield from fallback()


SENTENCE_END = re.compile(r"[.!?]\s|\n")  # a sentence's end, seen once the next one begins ("Dr. X" too)


def _with(tokenizer, answer: AnswerText, token: int) -> str:
    """The answer's text with `token` appended."""
    return tokenizer.decode([*answer.tokens, token], skip_special_tokens=True)
