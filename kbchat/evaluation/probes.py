"""The one way a benchmark case becomes probes, shared by `kbchat bench` and the bench scripts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from kbchat.audit.probes import (
    FLUENCY,
    GENERALIZATION,
    LOCALITY,
    PORTABILITY,
    RELIABILITY,
    Probe,
    fluency_probe,
    kind_of,
)
from kbchat.evaluation.datasets import EditCase

# Probes taken per kind from each case; CounterFact's ROME layout has ten neighbourhood prompts
# and as many generation prompts, which would make a 50-case run take hours on a CPU.
MAX_PROBES = 3

_T = TypeVar("_T")


def case_probes(case: EditCase, max_probes: int | None = MAX_PROBES) -> list[Probe]:
    """The probes for one benchmark case, at most `max_probes` of each kind from the dataset (all of
    them when None).

    Reliability: the edit prompt (a question, as in zsRE, is asked in chat). Generalization: the
    paraphrases. Locality: the neighbourhood prompts with their answers. Portability: the
    portability questions. Fluency: the generation prompts, or "Tell me about {subject}." in chat
    when the case has none. Neighbourhood and portability prompts without an answer are left out.
    """
    request = case.request
    target, old = request.target, request.target_true

    def first(items: Sequence[_T]) -> list[_T]:
        return list(items if max_probes is None else items[:max_probes])

    probes = [Probe(RELIABILITY, request.text, target, old, kind_of(request.text))]
    probes += [Probe(GENERALIZATION, p, target, old, kind_of(p)) for p in first(case.paraphrases)]
    probes += [Probe(LOCALITY, p, answer, kind=kind_of(p)) for p, answer in first(case.neighborhood) if answer]
    probes += [Probe(PORTABILITY, p, answer, kind=kind_of(p)) for p, answer in first(case.portability) if answer]
    prompts = first(case.generation_prompts)
    probes += [Probe(FLUENCY, p, "", kind=kind_of(p)) for p in prompts] if prompts else [fluency_probe(request)]
    return probes

