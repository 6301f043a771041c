"""Other subjects' keys: what an MLP output projection reads at the last token of names that real text
often mentions (capitalised multi-word names from the statistics corpus, each read on its own).

AlphaEdit can hold their outputs in place as it holds earlier edits' (experimental,
`AlphaEditHParams.bank`). The neighbours a long sequence of edits disturbs are facts about *other
subjects*, and a name's last token is a rare position in running text, so the corpus statistics that
define the null space barely weigh the directions such keys use.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from methods.hooks import Trace
from methods.tokens import right_padded

OPENERS = frozenset("The A An In On At It This That He She His Her Its After During When While".split())  # sentence starts
NAME = re.compile(r"\b[A-Z][a-z]+(?: (?:of |de |the )?[A-Z][a-z]+)+\b")  # "Léon Blum", "Bank of England"


def entity_names(texts: Iterable[str], n: int, scan: int = 3000) -> list[str]:
    """The `n` most frequent capitalised multi-word names in the first `scan` of `texts` (ties in the
    order they first appear)."""
    counts: Counter[str] = Counter()
    for i, text in enumerate(texts):
        if i >= scan:
            break
        counts.update(m.group(0) for m in NAME.finditer(text) if m.group(0).split()[0] not in OPENERS)
    return [name for name, _ in counts.most_common(n)]


@torch.no_grad()
def name_keys(model: nn.Module, tokenizer, module: str, names: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """(len(names), in) what `module` receives at each name's last token, the name read alone."""
    device = next(model.parameters()).device
    rows = [tokenizer(name, add_special_tokens=False)["input_ids"] for name in names]
    keys = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        input_ids, mask = right_padded(tokenizer, chunk, device)
        with Trace(model, [module], retain_input=True, retain_output=False, stop=True) as trace:
            model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        seen = trace.inputs[module]  # (B, T, in)
        last = torch.tensor([len(r) - 1 for r in chunk], device=device)
        keys.append(seen[torch.arange(len(chunk), device=device), last])
    return torch.cat(keys).float()
