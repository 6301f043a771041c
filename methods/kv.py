"""Keys and values, written once for ROME, MEMIT, AlphaEdit and in-model memory edits.

A *key* is what a rewritten module (an MLP output projection) receives at the subject's last token;
a *value* is what some hooked module should emit there so that the model continues the prompt with
the target. The prompts an edit is computed on are built here too: the raw prompt behind a few
neutral prefixes (as ROME's context templates) and, for chat models, the prompt as the beginning of
an assistant answer, because an edit that only moves raw continuations may not move chat answers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.hooks import Trace, frozen
from methods.hparams import ContextHParams, ValueHParams
from methods.own_answer import AnswerRows, OwnAnswer, answer_kl, answer_rows, kept_logprobs
from methods.precision import work_dtype, working_copy
from methods.progress import ProgressFn, silent
from methods.requests import EditRequest
from methods.tokens import leading_bos, right_padded, subject_last_tokens

ESSENCE_PROMPT = "{} is a"
DEFAULT_CONTEXTS = ContextHParams()


@dataclass(frozen=True)
class EditTexts:
    """The full texts an edit is computed on; each ends right before the target."""

    raw: tuple[str, ...]
    chat: tuple[str, ...]

    @property
    def texts(self) -> tuple[str, ...]:
        return self.raw + self.chat


def edit_texts(tokenizer, request: EditRequest, chat: bool = True,
               contexts: ContextHParams = DEFAULT_CONTEXTS) -> EditTexts:
    """Raw prompts behind neutral prefixes, plus chat-formatted ones when the tokenizer has a template."""
    prompt = request.text
    raw = tuple(prefix + prompt for prefix in contexts.prefixes)
    chatty = []
    if chat and getattr(tokenizer, "chat_template", None):
        for question in contexts.chat_questions:
            head = tokenizer.apply_chat_template(
                [{"role": "user", "content": question.format(request.subject)}],
                add_generation_prompt=True,
                tokenize=False,
            )
            chatty.append(head + prompt)
    return EditTexts(raw, tuple(chatty))


@dataclass(frozen=True)
class Batch:
    """Right-padded token ids with, per row, the subject's last-token positions and target positions."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    subject_positions: tuple[tuple[int, ...], ...]  # per row: every occurrence of the subject
    target_positions: tuple[tuple[int, ...], ...]  # per row: positions whose logits predict target tokens
    target_ids: tuple[tuple[int, ...], ...]


def target_token_ids(tokenizer, text: str, target: str) -> list[int]:
    """Token ids of " target" as they follow `text` (tokenised together, so merges are right)."""
    head = tokenizer(text, add_special_tokens=False)["input_ids"]
    full = tokenizer(text + " " + target, add_special_tokens=False)["input_ids"]
    if full[: len(head)] == head and len(full) > len(head):
        return full[len(head) :]
    return tokenizer(" " + target, add_special_tokens=False)["input_ids"]



def build_batch(tokenizer, texts: Sequence[str], subject: str, target: str | None, device) -> Batch:
    """Tokenise `texts` (each + target when given; behind BOS where the tokenizer adds one), right-padded,
    with the positions the methods need."""
    rows, subj, tpos, tids = [], [], [], []
    bos = leading_bos(tokenizer)
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        lead = bos if ids[:1] != bos else []  # a chat template's text may begin with BOS already
        ids = lead + ids
        subj.append(tuple(p + len(lead) for p in subject_last_tokens(tokenizer, text, subject)))
        if target is not None:
            t_ids = target_token_ids(tokenizer, text, target)
            # Logits at position p predict token p+1: the target's tokens are predicted from len(ids)-1 on.
            tpos.append(tuple(range(len(ids) - 1, len(ids) - 1 + len(t_ids))))
            tids.append(tuple(t_ids))
            ids = ids + t_ids[:-1]
        else:
            tpos.append(())
            tids.append(())
        rows.append(ids)
    input_ids, mask = right_padded(tokenizer, rows, device)
    return Batch(input_ids, mask, tuple(subj), tuple(tpos), tuple(tids))



def _gather(hidden: torch.Tensor, positions: Sequence[Sequence[int]]) -> torch.Tensor:
    """Rows of `hidden` (B, T, d) at the given positions, stacked: (n_positions, d)."""
    return torch.cat([hidden[b, list(pos)] for b, pos in enumerate(positions)], 0)


@torch.no_grad()
def _at_subject(model: nn.Module, tokenizer, module: str, requests: Sequence[EditRequest], chat: bool,
                contexts: ContextHParams, inputs: bool) -> torch.Tensor:
    """(n_requests, d) mean input (or output) of `module` at the subject's last token, over each edit's texts."""
    device = next(model.parameters()).device
    rows = []
    for request in requests:
        texts = edit_texts(tokenizer, request, chat, contexts).texts
        batch = build_batch(tokenizer, texts, request.subject, None, device)
        with Trace(model, [module], retain_input=inputs, retain_output=not inputs, stop=True) as trace:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        seen = trace.inputs[module] if inputs else trace.outputs[module]
        rows.append(_gather(seen, batch.subject_positions).mean(0))
    return torch.stack(rows).float()


def compute_keys(model: nn.Module, tokenizer, module: str, requests: Sequence[EditRequest],
                 chat: bool = True, contexts: ContextHParams = DEFAULT_CONTEXTS) -> torch.Tensor:
    """(n_requests, in) the keys: what `module` receives at the subject's last token."""
    return _at_subject(model, tokenizer, module, requests, chat, contexts, inputs=True)


def compute_outputs(model: nn.Module, tokenizer, module: str, requests: Sequence[EditRequest],
                    chat: bool = True, contexts: ContextHParams = DEFAULT_CONTEXTS) -> torch.Tensor:
    """(n_requests, out) what `module` emits at the subject's last token."""
    return _at_subject(model, tokenizer, module, requests, chat, contexts, inputs=False)


@dataclass(frozen=True)
class ValueResult:
    init: torch.Tensor  # (d,) mean original output of the hooked module at the subject
    delta: torch.Tensor  # (d,) what must be added there
    nll: float  # the target's mean NLL at the end
    steps: int

    @property
    def target(self) -> torch.Tensor:
        return self.init + self.delta


@dataclass
class TextGroup:
    """Rows run together; a token prefix shared by all rows (before any subject) is computed once."""

    batch: Batch  # positions relative to the suffix after the cached prefix
    prefix_cache: object | None  # a transformers Cache for the shared prefix, batch 1
    prefix_len: int
    essence_row: int | None  # the row whose last-token distribution the KL term keeps


def _split_prefix(model: nn.Module, batch: Batch, min_len: int = 8) -> tuple[Batch, object | None, int]:
    """Cut the longest token prefix common to every row and preceding every subject; cache its keys/values.

    Chat-formatted texts share a long system prompt: running it once instead of every step is most
    of the cost of optimising on chat prompts.
    """
    ids = batch.input_ids
    first_subject = min(min(pos) for pos in batch.subject_positions)
    same = (ids == ids[:1]).all(0).long()  # (T,) 1 where every row agrees
    common = int(same.cumprod(0).sum()) if ids.shape[0] > 1 else 0
    p = min(common, first_subject)
    if p < min_len:
        return batch, None, 0
    with torch.no_grad():
        cache = model(input_ids=ids[:1, :p], use_cache=True).past_key_values
    shifted = Batch(
        ids[:, p:],
        batch.attention_mask[:, p:],
        tuple(tuple(i - p for i in pos) for pos in batch.subject_positions),
        tuple(tuple(i - p for i in pos) for pos in batch.target_positions),
        batch.target_ids,
    )
    return shifted, cache, p


def _hidden(model: nn.Module, group: TextGroup) -> torch.Tensor:
    """Final hidden states (B, T_suffix, d) of a group, reusing its cached prefix."""
    b = group.batch
    if group.prefix_cache is None:
        out = model.base_model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
        return out.last_hidden_state
    cache = copy.deepcopy(group.prefix_cache)  # forward appends to a cache: never touch the original
    cache.batch_repeat_interleave(b.input_ids.shape[0])
    ones = torch.ones(b.input_ids.shape[0], group.prefix_len, dtype=b.attention_mask.dtype, device=b.input_ids.device)
    mask = torch.cat([ones, b.attention_mask], 1)
    out = model.base_model(input_ids=b.input_ids, attention_mask=mask, past_key_values=cache, use_cache=True)
    return out.last_hidden_state


def value_groups(model: nn.Module, tokenizer, request: EditRequest, chat: bool,
                 contexts: ContextHParams = DEFAULT_CONTEXTS) -> list[TextGroup]:
    """The edit's texts (each followed by the target) plus the KL prompt, grouped for cheap forwards."""
    device = next(model.parameters()).device
    texts = edit_texts(tokenizer, request, chat, contexts)
    raw, chatty = texts.raw, texts.chat
    groups = []
    raw_batch = build_batch(tokenizer, raw, request.subject, request.target, device)
    essence = build_batch(tokenizer, [ESSENCE_PROMPT.format(request.subject)], request.subject, None, device)
    groups.append(TextGroup(_concat(raw_batch, essence, tokenizer), None, 0, essence_row=len(raw)))
    if chatty:
        batch, cache, p = _split_prefix(model, build_batch(tokenizer, chatty, request.subject, request.target, device))
        groups.append(TextGroup(batch, cache, p, essence_row=None))
    return groups


def optimize_value(
    model: nn.Module,
    tokenizer,
    request: EditRequest,
    module: str,
    hparams: ValueHParams,
    progress: ProgressFn = silent,
    answers: Sequence[OwnAnswer] = (),
) -> ValueResult:
    """Find delta so that adding it to `module`'s output at the subject makes the model say the target.

    Loss = target NLL over the edit texts + kl_factor * KL on "{subject} is a" (keep what the subject
    *is*) + answer_kl * KL on the model's own `answers` away from the replaced fact (`methods.own_answer`)
    + weight decay; ||delta|| is clamped to clamp_norm_factor * ||init||. The model's weights are
    not changed (and their requires_grad flags are restored).

    The steps run on a cheaper-precision working copy when `hparams.work_dtype` picks one; the result
    is then checked on the model itself, and optimisation goes on there (same optimizer state) within
    the remaining step budget if the check fails.
    """
    device = next(model.parameters()).device
    delta = torch.zeros(_out_features(model, module), device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=hparams.lr)
    used = 0
    work = working_copy(model, work_dtype(model, hparams.work_dtype))
    if work is not None:
        used = _descend(work, tokenizer, request, module, hparams, delta, optimizer, hparams.steps, 0, progress,
                        answers).steps
        del work
    return _descend(model, tokenizer, request, module, hparams, delta, optimizer, hparams.steps - used, used, progress,
                    answers)


def _descend(
    model: nn.Module,
    tokenizer,
    request: EditRequest,
    module: str,
    hparams: ValueHParams,
    delta: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    steps: int,
    done: int,
    progress: ProgressFn,
    answers: Sequence[OwnAnswer] = (),
) -> ValueResult:
    """At most `steps` updates of `delta` on `model`, stopping once the target NLL is below stop_nll.

    The loss is always evaluated once more after the last update, so the NLL returned is the final one.
    """
    groups, own = _groups(model, tokenizer, request, hparams, answers)
    originals: list[list[torch.Tensor]] = [[] for _ in groups]
    current = {"group": 0}

    def edit(out: torch.Tensor, _name: str) -> torch.Tensor:
        g = current["group"]
        positions = groups[g].batch.subject_positions
        rows = [b for b in range(len(positions)) if b != groups[g].essence_row]
        if not originals[g]:
            originals[g].append(torch.cat([out.detach()[b, list(positions[b])] for b in rows]).float())
        out = out.clone()
        for b, pos in enumerate(positions):
            out[b, list(pos)] = out[b, list(pos)] + delta.to(out.dtype)
        return out

    anchors = Anchors(model, groups, own.kept if own is not None else None)
    with frozen(model):
        nll_value, step, init = float("inf"), 0, None
        for step in range(steps + 1):
            optimizer.zero_grad()
            hiddens = []
            for g, group in enumerate(groups):
                current["group"] = g
                with Trace(model, [module], edit_output=edit, retain_output=False):
                    hiddens.append(_hidden(model, group))  # (B, T, d)
            nll = target_nll(model, groups, hiddens)
            if init is None:
                init = torch.cat([o[0] for o in originals]).mean(0)  # (d,)
            nll_value = float(nll.detach())
            if nll_value < hparams.stop_nll or step == steps:
                break
            progress("value", done + step + 1, hparams.steps, nll_value)
            decay = hparams.weight_decay * delta.norm() ** 2 / init.norm() ** 2
            (nll + anchors.loss(hiddens, hparams) + decay).backward()
            optimizer.step()
            with torch.no_grad():
                limit = hparams.clamp_norm_factor * init.norm()
                if delta.norm() > limit:
                    delta.mul_(limit / delta.norm())
    return ValueResult(init=init, delta=delta.detach().float().clone(), nll=nll_value, steps=done + step)


def _groups(model: nn.Module, tokenizer, request: EditRequest, hparams: ValueHParams,
            answers: Sequence[OwnAnswer]) -> tuple[list[TextGroup], AnswerRows | None]:
    """The value's text groups; with own `answers`, their rows as a last group that has no target, only
    positions whose next-token distribution is kept."""
    groups = value_groups(model, tokenizer, request, hparams.chat_prompts, hparams.contexts)
    own = answer_rows(tokenizer, answers, request.subject, next(model.parameters()).device) if answers else None
    if own is not None:
        empty = tuple(() for _ in own.kept)
        groups.append(TextGroup(Batch(own.input_ids, own.attention_mask, own.subject_positions, empty, empty),
                                None, 0, essence_row=None))
    return groups, own


class Anchors:
    """The KL terms of the value loss: "{subject} is a" (the first group's essence row) and, when `kept`
    is given, the own answers (the last group). Their unedited distributions are made on the first call,
    without the hook: a check that passes at once needs neither."""

    def __init__(self, model: nn.Module, groups: Sequence[TextGroup], kept: Sequence[Sequence[int]] | None) -> None:
        self.model, self.groups, self.kept = model, groups, kept
        self.head = model.get_output_embeddings()
        self.base: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def essence(self, hidden: torch.Tensor) -> torch.Tensor:
        group = self.groups[0]
        row = group.essence_row
        last = int(group.batch.attention_mask[row].sum()) - 1
        return F.log_softmax(self.head(hidden[row, last]).float(), -1)  # (V,)

    def loss(self, hiddens: Sequence[torch.Tensor], hparams: ValueHParams) -> torch.Tensor:
        if self.base is None:
            with torch.no_grad():
                answers = (kept_logprobs(self.head, _hidden(self.model, self.groups[-1]), self.kept)
                           if self.kept is not None else None)
                self.base = (self.essence(_hidden(self.model, self.groups[0])), answers)
        essence, answers = self.base
        loss = hparams.kl_factor * F.kl_div(self.essence(hiddens[0]), essence, log_target=True, reduction="sum")
        if answers is not None:
            loss = loss + hparams.answer_kl * answer_kl(kept_logprobs(self.head, hiddens[-1], self.kept), answers)
        return loss


def target_nll(model: nn.Module, groups: Sequence[TextGroup], hiddens: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over rows of each row's mean target-token NLL, from the groups' final hidden states."""
    head = model.get_output_embeddings()
    nlls = []
    for group, hidden in zip(groups, hiddens, strict=True):
        b = group.batch
        for row, (pos, ids) in enumerate(zip(b.target_positions, b.target_ids, strict=True)):
            if pos:
                log_probs = F.log_softmax(head(hidden[row, list(pos)]).float(), -1)  # (n_target, V)
                nlls.append(-log_probs[range(len(ids)), list(ids)].mean())
    return torch.stack(nlls).mean()


def group_hiddens(model: nn.Module, groups: Sequence[TextGroup]) -> list[torch.Tensor]:
    return [_hidden(model, g) for g in groups]


def _concat(a: Batch, b: Batch, tokenizer) -> Batch:
    """Rows of `a` then rows of `b`, right-padded to one width."""
    width = max(a.input_ids.shape[1], b.input_ids.shape[1])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def widen(t: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[1]), value=value)

    return Batch(
        torch.cat([widen(a.input_ids, pad), widen(b.input_ids, pad)]),
        torch.cat([widen(a.attention_mask, 0), widen(b.attention_mask, 0)]),
        a.subject_positions + b.subject_positions,
        a.target_positions + b.target_positions,
        a.target_ids + b.target_ids,
    )


def _out_features(model: nn.Module, module: str) -> int:
    from methods.delta import weight_of

    m = model.get_submodule(module)
    if hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 2:
        return weight_of(m).shape[0]
    return model.config.hidden_size  # a whole block: its output is the residual stream
