"""Talking to the model: chat prompts, a streaming greedy decoder, and the log-probabilities the
/edit parser uses to find where a stated fact departs from what the model believes.

The decoder runs on the caller's thread (no background thread), so that per-thread state such as
the selected in-model memory edits applies to exactly this generation.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from kbchat.runtime.guard import NameGuard

# Base models (no chat template) are asked in a plain question/answer format, which they continue
# naturally; the answer ends at the next line or at the next "Question:" the model invents.
QUESTION, ANSWER = "Question:", "Answer:"
PLAIN_STOPS = ("\n", QUESTION)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def plain_transcript(messages: Sequence[Mapping[str, str]]) -> str:
    """`messages` as "Question: ...\nAnswer: ..." pairs, a blank line apart, system messages first as
    plain paragraphs; it ends with "Answer:" after the last question. For base models (no chat format)."""
    head = "".join(f"{m['content'].strip()}\n\n" for m in messages if m["role"] == "system")
    turns: list[str] = []
    for m in messages:
        text = " ".join(m["content"].split())
        if m["role"] == "user":
            turns.append(f"{QUESTION} {text}\n{ANSWER}")
        elif m["role"] == "assistant" and turns:
            turns[-1] += f" {text}\n"
    return head + "\n".join(turns)


def chat_stops(tokenizer) -> tuple[str, ...]:
    """Stop strings that end an answer in the model's chat format: none with a template (EOS does it),
    the next line or "Question:" in the plain format."""
    return () if has_chat_template(tokenizer) else PLAIN_STOPS


def chat_text(tokenizer, messages: Sequence[Mapping[str, str]]) -> str:
    """The text `decoding.chat_input_ids` tokenizes."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return plain_transcript(messages)


def chat_input_ids(tokenizer, messages: Sequence[Mapping[str, str]], device) -> torch.Tensor:
    """(1, T) ids of `messages` in the model's chat format, ready for the assistant's turn; for a model
    without a chat template, the plain question/answer format (`plain_transcript`; stop with `chat_stops`)."""
    if has_chat_template(tokenizer):
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt")
        if not isinstance(ids, torch.Tensor):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
    else:
        ids = tokenizer(plain_transcript(messages), return_tensors="pt")["input_ids"]
    return ids.to(device)


def completion_input_ids(tokenizer, text: str, device) -> torch.Tensor:
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)


class AnswerText:
    """One greedy answer's text as its tokens arrive, cut as `stream_tokens` cuts it.

    `push(token)` returns the piece to yield now ("" when none); `done` turns true at a stop string.
    `text` is the decoded answer so far (it may end partway through a character).
    """

    def __init__(self, tokenizer, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.tokens: list[int] = []
        self.text = ""
        self.sent = ""  # the text already yielded, as decoded when it was
        self.pieces: list[str] = []
        self.done = False

    def push(self, token: int) -> str:
        self.tokens.append(token)
        text = self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
            return ""
        # A stop string counts only after the answer has begun (a leading newline is not an answer).
        begun = len(text) - len(text.lstrip())
        stop_at = min((i for s in self.stops if (i := text.find(s, begun)) != -1), default=None)
        if stop_at is not None:
            self.done = True
            return self._piece(text[len(self.sent):stop_at] if stop_at > len(self.sent) else "")
        if len(text) > len(self.sent):
            piece, self.sent = text[len(self.sent):], text
            return self._piece(piece)
        return ""

    def _piece(self, piece: str) -> str:
        if piece:
            self.pieces.append(piece)
        return piece


def last_logits_only(model: nn.Module) -> dict:
    """The keyword that makes a prefill compute the output layer for its last position only (what
    `generate` does too): the other positions' logits are never read, and they cost a full pass over
    the 49k-word output layer per prompt token."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def eos_ids(model: nn.Module, tokenizer) -> set[int]:
    return {tokenizer.eos_token_id} | set(_as_list(getattr(model.generation_config, "eos_token_id", None)))


@torch.no_grad()
def stream_tokens(
    model: nn.Module,
    tokenizer,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    cancel: threading.Event | None = None,
    stop_strings: Sequence[str] = (),
    guard: NameGuard | None = None,
) -> Iterator[str]:
    """Greedy decoding, yielding text pieces as soon as they decode cleanly; stops at EOS, a stop
    string, `max_new_tokens` or `cancel`. With `guard`, names in the answer are copied unpatched."""
    eos = eos_ids(model, tokenizer)
    last = last_logits_only(model)
    past = None
    swap = None
    step_ids = input_ids
    answer = AnswerText(tokenizer, stop_strings)
    for _ in range(max_new_tokens):
        if cancel is not None and cancel.is_set():
            return
        with guard.step(swap, answer.text) if guard is not None else nullcontext():
            out = model(input_ids=step_ids, past_key_values=past, use_cache=True, **last)
        if past is None and guard is not None:
            swap = guard.start(model, input_ids, out.past_key_values)
        past = out.past_key_values
        token = int(out.logits[0, -1].argmax())
        if token in eos:
            break
        step_ids = torch.tensor([[token]], device=input_ids.device)
        piece = answer.push(token)
        if piece:
            yield piece
        if answer.done:
            return


def greedy_text(model: nn.Module, tokenizer, input_ids: torch.Tensor, max_new_tokens: int,
                stops: Sequence[str] = ()) -> str:
    """The whole greedy continuation of `input_ids` as one string: `stream_tokens` joined."""
    return "".join(stream_tokens(model, tokenizer, input_ids, max_new_tokens, None, stops))


# Rows decoded together at most; longer lists are decoded in consecutive batches.
BATCH_ROWS = 16


@torch.no_grad()
def batch_greedy(model: nn.Module, tokenizer, inputs: Sequence[torch.Tensor], max_new_tokens: int,
                 stops: Sequence[str] = ()) -> list[str]:
    """The greedy continuation of each (1, T_i) input, decoded together: for every input, the text
    `greedy_text` gives for it alone (EOS, `stops` and `max_new_tokens` as there), in input order.

    Inputs are left-padded, with an attention mask and position ids counted from each row's first
    real token; rows that finished leave the batch (and its KV cache). At most BATCH_ROWS at once.
    """
    out: list[str] = []
    for start in range(0, len(inputs), BATCH_ROWS):
        out += _decode_batch(model, tokenizer, inputs[start:start + BATCH_ROWS], max_new_tokens, stops)
    return out


def left_pad(inputs: Sequence[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, T_max): each (1, T_i) input right-aligned after `pad` tokens (mask 0)."""
    width = max(int(x.shape[-1]) for x in inputs)
    device = inputs[0].device
    ids = torch.full((len(inputs), width), pad, dtype=torch.long, device=device)  # (B, T)
    mask = torch.zeros((len(inputs), width), dtype=torch.long, device=device)  # (B, T)
    for row, x in enumerate(inputs):
        n = int(x.shape[-1])
        ids[row, width - n:] = x[0]
        mask[row, width - n:] = 1
    return ids, mask


def _decode_batch(model: nn.Module, tokenizer, inputs: Sequence[torch.Tensor], max_new_tokens: int,
                  stops: Sequence[str]) -> list[str]:
    """`batch_greedy` for one batch."""
    if not inputs:
        return []
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Only the last position's logits are read: a batch of prompts would otherwise pay (B, T, V) of them.
    last = last_logits_only(model)
    shared = shared_prefix(inputs)
    past = None
    if shared:  # e.g. the chat template's system turn: computed once, its KV cache copied to every row
        past = model(input_ids=inputs[0][:, :shared], use_cache=True, **last).past_key_values
        past.batch_repeat_interleave(len(inputs))
    step_ids, mask = left_pad([x[:, shared:] for x in inputs], pad)  # (B, T), (B, T): the rest of each
    positions = shared + (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): counted from each row's first real token
    mask = torch.cat([mask.new_ones((len(inputs), shared)), mask], dim=-1)  # (B, shared + T): pads mid-row
    answers = [AnswerText(tokenizer, stops) for _ in inputs]
    live = list(range(len(inputs)))  # the answer each batch row belongs to
    for _ in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                    use_cache=True, **last)
        past = out.past_key_values
        tokens = out.logits[:, -1].argmax(-1).tolist()  # (B_live,)
        keep = [j for j, (row, token) in enumerate(zip(live, tokens, strict=True))
                if token not in eos and not _finished(answers[row], token)]
        if not keep:
            break
        if len(keep) < len(live):  # finished rows leave the batch
            index = torch.tensor(keep, device=mask.device)
            past.batch_select_indices(index)
            mask, positions = mask[index], positions[index]
            live = [live[j] for j in keep]
        step_ids = torch.tensor([[tokens[j]] for j in keep], device=mask.device)  # (B_live, 1)
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=-1)  # (B_live, T + 1)
        positions = positions[:, -1:] + 1  # (B_live, 1)
    return ["".join(a.pieces) for a in answers]


# A shared prefix shorter than this is not worth a pass of its own.
MIN_SHARED_PREFIX = 8


def shared_prefix(inputs: Sequence[torch.Tensor]) -> int:
    """The number of leading tokens all (1, T_i) inputs share, leaving each at least one of its own;
    0 for a single input or when fewer than MIN_SHARED_PREFIX are shared."""
    if len(inputs) < 2:
        return 0
    rows = [x[0] for x in inputs]
    limit = min(int(r.shape[0]) for r in rows) - 1
    first = rows[0][:limit]
    same = torch.ones(limit, dtype=torch.bool, device=first.device)  # (limit,)
    for r in rows[1:]:
        same &= r[:limit] == first
    shared = int(same.long().cumprod(0).sum()) if limit > 0 else 0
    return shared if shared >= MIN_SHARED_PREFIX else 0


def _finished(answer: AnswerText, token: int) -> bool:
    answer.push(token)
    return answer.done


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@torch.no_grad()
def next_word_gaps(model: nn.Module, tokenizer, text: str, offsets: Sequence[int]) -> list[float]:
    """For each character offset (the start of a word): log P(its first token) - log P(the model's top
    token), given the text before it. 0 means the model itself would say this word there.

    One forward pass over `text`; the /edit parser uses it to find where a fact departs from what
    the model believes.
    """
    device = next(model.parameters()).device
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False, return_tensors="pt")
    ids = enc["input_ids"].to(device)
    spans = enc["offset_mapping"][0].tolist()
    log_probs = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # (T, V)
    result = []
    for offset in offsets:
        # The first token covering the word (its span may start at the preceding space).
        index = next((i for i, (a, b) in enumerate(spans) if b > offset), None)
        if index is None or index == 0:
            result.append(0.0)
            continue
        row = log_probs[index - 1]
        result.append(float(row[ids[0, index]] - row.max()))
    return result
