"""Hyperparameters as typed dataclasses, with defaults chosen per architecture and depth.

`RomeHParams.for_model(model, layer=6)` gives the defaults for `model` with overrides; an unknown
key is a TypeError, never silently ignored.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, TypeVar

from torch import nn

from methods.architecture import architecture_of, num_layers

H = TypeVar("H")


@dataclass(frozen=True)
class ContextHParams:
    """The texts an edit is computed on: the prompt behind each prefix and, for chat models, as the
    start of the answer to each question about the subject. Each text is a row in every step."""

    prefixes: tuple[str, ...] = ("", "Here is a fact. ", "I read this in a book. ", "As everyone knows, ")
    chat_questions: tuple[str, ...] = ("Tell me about {}.", "What do you know about {}?")


# ROME's default: two prefixes and one question instead of four and two. Measured on 20 CounterFact
# edits of SmolLM2: efficacy 100% and neighbourhood 100% either way, paraphrases 95% vs 100%,
# generation 90% either way, 2.6 s vs 3.6 s per edit. MEMIT and AlphaEdit keep the full set: their
# keys are averaged over it, and AlphaEdit protects those averages for later edits.
ROME_CONTEXTS = ContextHParams(prefixes=("", "Here is a fact. "), chat_questions=("Tell me about {}.",))


@dataclass(frozen=True)
class ValueHParams:
    """How the target value (ROME's v*, MEMIT's z) is optimised."""

    steps: int = 25  # Adam steps on the residual vector delta
    lr: float = 1.0  # 0.5 (ROME's) took ~18 steps on SmolLM2, 1.0 ~10, with the same figures
    weight_decay: float = 1e-3  # on ||delta||^2 / ||v0||^2
    clamp_norm_factor: float = 4.0  # ||delta|| <= factor * ||v0||
    kl_factor: float = 0.0625  # keeps "{subject} is a" predictions where they were
    answer_kl: float = 1.0  # keeps the model's own answers where given (`optimize_value(answers=)`), per position
    # stop once the target's mean NLL is below this (P ~ 0.9): 0.05 cost ~5 more steps per edit on
    # SmolLM2 for no change in efficacy, neighbourhood or generation on 20 CounterFact edits
    stop_nll: float = 0.1
    chat_prompts: bool = True  # also optimise on chat-formatted prompts: chat answers must change too
    contexts: ContextHParams = field(default_factory=ContextHParams)
    # dtype of the optimisation steps: "auto" (bfloat16 on CPUs with native bf16 for a float32 model),
    # "model", or a torch dtype name; the result is always checked and finished in the model's dtype
    work_dtype: str = "auto"


@dataclass(frozen=True)
class StatsHParams:
    """Second-moment statistics of MLP keys over real text."""

    n_tokens: int = 100_000
    seq_len: int = 256
    batch_size: int = 8


@dataclass(frozen=True)
class RomeHParams:
    layer: int
    value: ValueHParams = field(default_factory=ValueHParams)
    stats: StatsHParams = field(default_factory=StatsHParams)
    ridge: float = 1e-4  # relative to the covariance's mean diagonal; keeps C invertible


@dataclass(frozen=True)
class MemitHParams:
    layers: tuple[int, ...]
    value: ValueHParams = field(default_factory=ValueHParams)
    stats: StatsHParams = field(default_factory=StatsHParams)
    # lambda in (lambda C + K^T K)^-1, C being a per-token mean. A typical key has k^T C^-1 k ~ d_in, so
    # lambda ~ d_in lets one layer carry about half of its residual share (measured on SmolLM2: 15,000
    # moved only 50% of CounterFact edits; 1,536 moved all, with neighbourhood intact).
    mom2_weight: float = 15_000.0


@dataclass(frozen=True)
class AlphaEditHParams:
    layers: tuple[int, ...]
    value: ValueHParams = field(default_factory=ValueHParams)
    stats: StatsHParams = field(default_factory=StatsHParams)
    nullspace_threshold: float = 1e-2  # eigenvalues of C below this * max span the preserved null space
    # Experimental, None is the paper's threshold: the null space is instead the smallest eigenvectors of C
    # holding this fraction of its trace. On SmolLM2 the threshold's null space holds 6% of the keys'
    # energy at layer 4 but 40% at layer 8 (1,272 of 1,536 directions): the largest eigenvalue, one
    # outlier direction, sets it. An energy bound protects every layer alike (5%: ~260-330 directions);
    # with l2 1 it cut the neighbours' drift per edit from 0.24 to -0.01 nats on 8 training edits, the
    # sequential curve not yet measured (bench/results/README.md, "AlphaEdit's null space").
    nullspace_energy: float | None = None
    l2: float = 10.0  # ridge on the update
    # Experimental; 0 is the paper's update. MEMIT's preservation term inside the projected space, a
    # weight on ||dW P K0||^2, for a "null space" that real text still uses. Little effect in the probe
    # above (C's eigenvalues are small there by construction).
    preserve: float = 0.0
    # Experimental; 0 is the paper's update. Keys of this many frequent names from the statistics corpus
    # (`methods.bank`) join the earlier edits' keys, each weighted `bank_weight`: other subjects' outputs
    # held in place, for long sequences whose neighbours (facts about other subjects) drift.
    bank: int = 0
    bank_weight: float = 1.0


@dataclass(frozen=True)
class FTHParams:
    layer: int
    steps: int = 25
    lr: float = 5e-4
    norm_constraint: float = 5e-4  # max absolute change of any weight entry (FT-L's L-infinity ball)
    chat_prompts: bool = True
    contexts: ContextHParams = field(default_factory=ContextHParams)


@dataclass(frozen=True)
class MendHParams:
    """MEND's editor (Mitchell et al. 2022): which MLP matrices it edits and the network's shape.

    `compute` follows the editor it is given (its own modules, rank and step sizes); these fields
    shape a new editor when one is trained, plus `scale`, a multiplier on the computed update.
    """

    layers: tuple[int, ...]  # every MLP matrix of these layers is edited (Llama: gate, up, down)
    # Low rank inside the editor: on SmolLM2 an (x, delta) pair is 576 + 1,536 = 2,112 wide, and 256 is
    # ~12% of that, the fraction MEND's 1,920 is of GPT-J's 4,096 + 16,384; it keeps two networks at
    # ~4.3M parameters (17 MB in float32), trainable in the ~2-hour CPU budget.
    rank: int = 256
    n_hidden: int = 1  # residual low-rank layers with a ReLU, before the last linear one (MEND's IDMLP)
    # The untrained editor's update is -alpha * (the gradient). Measured on SmolLM2-135M, 6 CounterFact
    # edits: alpha 1e-4 moves the target by ~0.1 nat, 1e-3 by 0.5-1.4 (paraphrase 0.2-0.8), 1e-2 by 4-6
    # (paraphrase 1.3-3.9). 1e-3 starts clearly downhill and leaves the rise to training.
    alpha_init: float = 1e-3
    scale: float = 1.0
    # Experimental, off by default (methods.mend.reach): at edit time, after the trained editor, the
    # input side of each rank-one term whitened by (C + whiten * mean diag C)^-1, and each request's
    # update multiplied by the first of `steps` at which its target beats its old answer on its prompt.
    # With whiten 0.01 and steps (0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16) the shipped MEND editor keeps 70% of
    # CounterFact neighbourhoods instead of ~38%, but paraphrases fall from ~96% to 61% and chat answers
    # stop naming the target (bench/results/README.md, "reach"): not yet a better default.
    whiten: float | None = None
    steps: tuple[float, ...] = ()
    stats: StatsHParams = field(default_factory=StatsHParams)
    # Experimental, for a newly trained editor (`kbchat train-editor --at-subject`): the (x, delta) pairs
    # are taken where the subject is read, its last token, in the output matrices of `subject_layers`
    # (the locate-then-edit layers), and each term's input side is whitened in training as at edit time
    # with (C + subject_ridge * mean diag C)^-1, ROME's key. Where the target is predicted, the last layers
    # carry the relation more than the subject and the update reaches every subject of the relation.
    at_subject: bool = False
    subject_layers: tuple[int, ...] = ()
    subject_ridge: float = 1e-4  # ROME's
    # The first update there is -alpha * (the gradient): on SmolLM2 a CounterFact subject's key has |x|^2 ~ 15-130
    # and its gradient |delta| ~ 0.06-0.8 in layers 4-8, while a single whitened step must move a layer's output
    # by ~10-30 to carry an edit; started at 1, training raised every alpha at its fastest rate for 100 steps.
    subject_alpha_init: float = 10.0
    # The step search an editor trained at the subject gets when `steps` is empty: its update is sized per
    # edit, from a quarter of the trained step up. Shipped editor, first 100 CounterFact val cases: efficacy /
    # neighbourhood 91 / 94 with it and the drift bound below (from 0.5, unbounded: 93 / 86), 84 / 84 as
    # trained. The smallest step that flips the raw prompt can be too small for a chat answer ("Where is the
    # Eiffel Tower located?" loses Rome after the Rome edit at 0.25); kbchat then raises it until the chat
    # answer names the target (EngineSettings.editor_scales).
    subject_steps: tuple[float, ...] = (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    # No searched step may move the next-token distributions of these neutral texts by more than
    # `max_drift` nats (mean KL per token): on SmolLM2, 23 of 25 CounterFact train edits took their step
    # at a drift of 0.0001-0.013, while 2 found their target only at steps 16 and 32, at drifts of 4.2 and
    # 12.4 (bench/results/mend-drift-train25-unbounded.json); a val edit at step 8 (drift 1.7) had "What is
    # the capital of France?" answered "French- Hand- French-- English--…". 0.15 is the geometric middle of
    # 0.013 and 1.7. It leaves some edits short of their target: held-out zsRE efficacy 78.0 against 84.1
    # unbounded (bench/results/README.md, "at the subject"); on zsRE training rows 0.3 and 0.6 gain one point
    # (bench/results/mend-drift-sweep-zsre-train100.json): the rest needs steps that garble. None: no bound.
    # `narrow_steps` carries part of the rest within the bound (78.0 -> 80.5).
    max_drift: float | None = 0.15
    # A request the bounded search leaves short is searched again with each module's update alone, over
    # these steps, under the same bound (methods.mend.reach.narrowed); () leaves it short. On the first
    # 100 zsRE training rows, 75 -> 78 efficacy, neighbourhood 97 either way (mend-narrowed-zsre-train100.json).
    narrow_steps: tuple[float, ...] = (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
    drift_texts: tuple[str, ...] = ("The capital of France is", "Water is made of hydrogen and",
                                    "The first president of the United States was", "My favourite food is",
                                    "The sun rises in the")


@dataclass(frozen=True)
class KNHParams:
    """Knowledge neurons (Dai et al. 2022): attribution by integrated gradients, then a value-vector edit."""

    layers: tuple[int, ...]  # attributed over every layer's MLP, as in the paper
    steps: int = 20  # Riemann steps of the integral from 0 to the activation (1 step is a plain gradient)
    threshold: float = 0.2  # neurons scoring above this fraction of the top score are selected (paper's t)
    max_neurons: int = 20  # a cap on the selection, in case attribution is flat
    erase_scale: float = 1.0  # lambda1: how much of the old answer's embedding leaves each value vector
    write_scale: float = 8.0  # lambda2: how much of the new answer's embedding enters it (the paper's 8)


def _scaled(fraction: float, n: int) -> int:
    return max(0, min(n - 1, round(fraction * n)))


@dataclass(frozen=True)
class Depth:
    """Where one family's locate-then-edit layers sit, as fractions of its depth."""

    single: float  # ROME's and FT-L's layer
    span: tuple[float, float]  # MEMIT's and AlphaEdit's first and last layer


# Llama: ROME edits layer 5/32 of Llama-2-7B, MEMIT 4-8/32. GPT-2: ROME 17/48 of GPT-2 XL, MEMIT 3-8/48.
_LLAMA_DEPTH = Depth(0.17, (0.12, 0.28))
_GPT2_DEPTH = Depth(0.35, (0.08, 0.35))
_DEPTHS = {
    "llama": _LLAMA_DEPTH,
    "gpt2": _GPT2_DEPTH,
    # Pre-norm rotary decoders with a gated MLP, as Llama: EasyEdit's Qwen and Mistral settings put ROME
    # at layer 5 and MEMIT at 4-8 of 28-32, Llama's fractions; Phi-3 and Gemma 3 are the same shape.
    "qwen2": _LLAMA_DEPTH,
    "mistral": _LLAMA_DEPTH,
    "phi3": _LLAMA_DEPTH,
    "gemma3": _LLAMA_DEPTH,
    # GPT-NeoX: ROME's GPT-NeoX-20B setting edits layer 15/44 (0.34), GPT-2's fraction; MEMIT's span as GPT-2's.
    "gpt_neox": _GPT2_DEPTH,
}


def defaults(cls: type[H], model: nn.Module) -> H:
    """Per-architecture defaults for `cls`, scaled to the model's depth.

    Locate-then-edit layers sit early-to-middle: ROME edits layer 17/48 of GPT-2 XL and 5/32 of
    Llama-2-7B; MEMIT spreads over 3-8 of 48 and 4-8 of 32 (per family: `_DEPTHS`).
    """
    arch, n = architecture_of(model), num_layers(model)
    depth = _DEPTHS.get(arch.family, _LLAMA_DEPTH)
    early = depth.span
    lo, hi = _scaled(early[0], n), max(_scaled(early[0], n), _scaled(early[1], n))
    span = tuple(range(lo, hi + 1))
    if cls is RomeHParams:
        return cls(layer=_scaled(depth.single, n), value=ValueHParams(contexts=ROME_CONTEXTS))
    if cls is MemitHParams:
        return cls(layers=span, mom2_weight=float(_mlp_width(model)))
    if cls is AlphaEditHParams:
        return cls(layers=span)
    if cls is FTHParams:
        return cls(layer=_scaled(depth.single, n))
    if cls is MendHParams:
        # MEND edits the last three layers' MLPs; at the subject, MEMIT's layers
        return cls(layers=tuple(range(max(0, n - 3), n)), subject_layers=span)
    if cls is KNHParams:
        return cls(layers=tuple(range(n)))
    raise TypeError(f"no defaults for {cls.__name__}")


def _mlp_width(model: nn.Module) -> int:
    """Input width of the rewritten MLP projection (the keys' dimension), from the config."""
    cfg = model.config
    width = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None)
    return int(width or 4 * getattr(cfg, "n_embd", getattr(cfg, "hidden_size", 0)))


def for_model(cls: type[H], model: nn.Module, **overrides: Any) -> H:
    """Defaults for `model`, with `overrides`; unknown keys raise TypeError."""
    return from_dict(cls, overrides, base=defaults(cls, model))


def from_dict(cls: type[H], values: dict[str, Any], base: H | None = None) -> H:
    """Build `cls` from a (possibly nested) dict, e.g. loaded from JSON. Unknown keys are errors."""
    names = {f.name: f for f in fields(cls)}
    unknown = set(values) - set(names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no hyperparameter(s) {sorted(unknown)}; known: {sorted(names)}")
    converted: dict[str, Any] = {}
    for key, value in values.items():
        current = getattr(base, key) if base is not None else _default(names[key])
        if isinstance(value, dict) and current is not None and hasattr(current, "__dataclass_fields__"):
            value = from_dict(type(current), value, base=current)
        elif isinstance(value, list):
            value = tuple(value)
        converted[key] = value
    return replace(base, **converted) if base is not None else cls(**converted)


def _default(f) -> Any:
    """A field's default value (a fresh one for a factory), None when it has none."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default
