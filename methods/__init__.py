"""Knowledge-editing methods as a library: pure functions from (model, tokenizer, requests, hparams)
to a `Delta` that can be applied, reverted and serialised. Nothing here knows about kbchat.

    import methods
    delta = methods.get("rome").compute(model, tokenizer, [EditRequest(...)])
    applied = delta.apply(model); ...; applied.undo()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from methods import alphaedit, ft, kn, memit, rome
from methods.delta import Applied, Delta, Update, load_delta, patched
from methods.hparams import (
    AlphaEditHParams,
    FTHParams,
    KNHParams,
    MemitHParams,
    MendHParams,
    RomeHParams,
    for_model,
    from_dict,
)
from methods.mend import compute as mend_compute
from methods.mend import compute_instructedit
from methods.requests import EditRequest
from methods.stats import StatsCache, model_fingerprint

__all__ = [
    "Applied", "Delta", "EditRequest", "Method", "StatsCache", "Update", "get", "load_delta", "model_fingerprint",
    "names", "patched",
]


@dataclass(frozen=True)
class Method:
    """An editing method. `compute(model, tokenizer, requests, hparams=None, **options) -> Delta`."""

    name: str
    compute: Callable[..., Delta]
    hparams_class: type
    uses_statistics: bool  # needs second moments (pass `stats=StatsCache(...)` to reuse them)
    protects_prior: bool  # accepts `prior=[earlier deltas]` for sequential editing
    summary: str
    editor_kind: str | None = None  # needs a trained editor of this kind: pass `editor=` or `editors=[paths]`

    def hparams(self, model, **overrides):
        """Defaults for `model`'s architecture with `overrides` (unknown keys raise TypeError)."""
        return for_model(self.hparams_class, model, **overrides)

    def hparams_from_dict(self, model, values: dict):
        return from_dict(self.hparams_class, values, base=for_model(self.hparams_class, model))


_REGISTRY = {
    m.name: m
    for m in (
        Method("rome", rome.compute, RomeHParams, True, False, "rank-one update of one MLP layer per fact"),
        Method("memit", memit.compute, MemitHParams, True, False, "batch update spread over several MLP layers"),
        Method("alphaedit", alphaedit.compute, AlphaEditHParams, True, True,
               "MEMIT projected onto the null space of preserved and earlier-edited keys"),
        Method("ft", ft.compute, FTHParams, False, False, "constrained fine-tuning of one MLP layer (baseline)"),
        # mend/instructedit need a trained editor: pass `editor=` or `editors=[files or directories]`
        # (found by `model_id`, the unedited model's fingerprint); `stats=` keeps whitening's moments.
        Method("mend", mend_compute, MendHParams, True, False,
               "a trained editor network turns the edit's gradient into a low-rank update of the last MLPs",
               editor_kind="mend"),
        Method("instructedit", compute_instructedit, MendHParams, True, False,
               "MEND's editor trained on several tasks, each edit input behind a task instruction",
               editor_kind="instructedit"),
        Method("kn", kn.compute, KNHParams, False, False,
               "knowledge neurons located by integrated gradients, value vectors moved (baseline)"),
    )
}


def get(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(_REGISTRY)}") from None


def names() -> list[str]:
    return list(_REGISTRY)
