"""`kbchat bench`'s table: a `BenchResult` as plain text."""

from __future__ import annotations

from pathlib import Path

from kbchat.audit.checks import GENERATION, TEACHER_FORCED
from kbchat.audit.probes import FLUENCY, METRICS, PORTABILITY
from kbchat.evaluation.runner import BenchResult


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def format_table(result: BenchResult) -> str:
    """The result as a plain-text table: one row per metric, teacher-forced and generation side by
    side (percentages), then fluency's entropies, seconds per edit and case counts."""
    figures = result.metrics()
    editing = ("sequential editing (all edits kept, reliability re-checked at the end)" if result.sequential
               else "single editing (each edit undone before the next)")
    lines = [
        f"{result.method} on {Path(result.data).name}: {len(result.completed)} case(s), {editing}",
        "",
        f"{'metric':<16}{'forced score':>14}{'forced pass':>13}{'generation':>12}{'cases':>7}",
    ]
    rows: list[tuple[str, dict[str, dict[str, float | int]]]] = [(m, figures.get(m, {})) for m in METRICS]
    if result.sequential:
        rows.append(("retention", result.retention()))
    for name, modes in rows:
        if name == PORTABILITY and not modes:
            continue  # the dataset has no portability questions
        forced, generated = modes.get(TEACHER_FORCED, {}), modes.get(GENERATION, {})
        forced_score = None if name == FLUENCY else forced.get("score")
        cases = max(int(forced.get("cases", 0)), int(generated.get("cases", 0)))
        lines.append(f"{name:<16}{_pct(forced_score):>14}{_pct(forced.get('passed')):>13}"
                     f"{_pct(generated.get('passed')):>12}{cases:>7}")
    lines.append("")
    entropy = result.fluency()
    if entropy is not None:
        lines.append(f"fluency: n-gram entropy {entropy['before']:.3f} before, {entropy['after']:.3f} after")
    seconds = result.seconds_per_edit()
    lines.append(f"seconds per edit (median): {'—' if seconds is None else f'{seconds:.2f}'}")
    counts = f"cases: {len(result.completed)} checked"
    if result.failed:
        counts += f", {len(result.failed)} failed"
    if result.skipped:
        counts += f", {result.skipped} unusable record(s) skipped"
    lines.append(counts)
    for case in result.failed:
        lines.append(f"  case {case.case_id}: {case.error}")
    return "\n".join(lines)



# The chat benchmark's targets (issue #12, serac): (figure, what is compared, threshold).
CHAT_TARGETS = (
    ("reliability", "rate", 0.95),
    ("other_wordings", "rate", 0.85),
    ("follow_up", "rate", 0.80),
    ("neighbours_unchanged", "rate", 0.98),
    ("canaries_unchanged", "rate", 0.98),
    ("neighbours_same_fact", "rate", 0.98),  # weight methods: the same fact, perhaps worded anew
    ("canaries_same_fact", "rate", 0.98),
)


def chat_verdicts(figures: dict) -> list[tuple[str, str, str, bool | None]]:
    """(figure, measured, target, met) rows: the rate targets, subject intact within 5 points of the
    unedited model, fluency (distinct 3-grams; the unedited model's NLL of the answers cut to one
    length, the fact's words not charged; plain and with the judge told each answer's fact) within
    10% of the unedited model's; the n-gram entropy
    and the NLL of the whole answers are shown without a verdict (see kbchat.evaluation.chat)."""
    rows: list[tuple[str, str, str, bool | None]] = []
    for name, key, threshold in CHAT_TARGETS:
        value = figures.get(name, {}).get(key)
        rows.append((name, _pct(value), f"≥ {threshold:.0%}", None if value is None else value >= threshold))
        for part, figure in figures.items():  # other_wordings[typo]: shown, the target is the whole's
            if name == "other_wordings" and part.startswith(f"{name}["):  # (reliability's: per relation, below)
                rows.append((f"· {part[len(name) + 1:-1]}", _pct(figure.get(key)), "part of the above", None))
    edited = figures.get("subject_intact_edited", {}).get("rate")
    unedited = figures.get("subject_intact_unedited", {}).get("rate")
    met = None if edited is None or unedited is None else edited >= unedited - 0.05
    rows.append(("subject_intact", f"{_pct(edited)} (unedited {_pct(unedited)})", "within 5 points", met))
    ent, base = (figures.get(f"distinct3_{w}", {}).get("mean") for w in ("edited", "unedited"))
    met = None if ent is None or not base else ent >= 0.9 * base
    rows.append(("fluency (distinct 3-grams)", f"{ent} (unedited {base})", "within 10%", met))
    for key, label in (("nll", "fluency (unedited model's NLL per token, same length, the fact's words not charged)"),
                       ("nll_told", "fluency (the same NLL, the judge told the fact each answer assumes)"),
                       ("nll_told_unquoted", "fluency (the same, told; both sides' answers written without the quote)")):
        nll, base = (figures.get(f"{key}_{w}", {}).get("nll") for w in ("edited", "unedited"))
        if key == "nll" or nll is not None:
            met = None if nll is None or base is None else nll <= 1.1 * base
            rows.append((label, f"{nll} (unedited {base}{_excess(nll, base)})", "within 10%", met))
    for name, key, label in (("entropy", "mean", "n-gram entropy"),
                             ("nll_whole", "nll", "NLL per token of the whole answers")):
        edited_v, base_v = (figures.get(f"{name}_{w}", {}).get(key) for w in ("edited", "unedited"))
        if edited_v is not None:
            rows.append((label, f"{edited_v} (unedited {base_v})", "shown only", None))
    return rows


def _excess(value: float | None, base: float | None) -> str:
    return "" if value is None or not base else f"; {100 * (value / base - 1):+.1f}%"


def format_chat_table(result: dict) -> str:
    """The chat benchmark's figures against the targets, as a Markdown table, then per relation."""
    lines = [f"Chat benchmark: {result['method']}, {result['cases']} cases, "
             f"{'sequential' if result.get('sequential') else 'single'} editing", "",
             "| figure | measured | target | met |", "|---|---|---|---|"]
    for name, measured, target, met in chat_verdicts(result["figures"]):
        lines.append(f"| {name} | {measured} | {target} | {'—' if met is None else 'yes' if met else 'NO'} |")
    relations = {k[len("reliability["):-1]: v for k, v in result["figures"].items() if k.startswith("reliability[")}
    if relations:
        lines += ["", "| relation | reliability | n |", "|---|---|---|"]
        lines += [f"| {r} | {_pct(v['rate'])} | {v['n']} |" for r, v in sorted(relations.items())]
    return "\n".join(lines)
