"""Many edits (issue #12): 1,000 serac memory edits active at once, typed as `SUBJECT → FACT`.

Distinct subjects from CounterFact's training records. At each checkpoint (number of active edits):
reliability (a fixed random sample of the edits made so far, asked the relation's chat question,
answers that mention the new target), neighbours unchanged (locality prompts of records not edited
plus the audit canaries, answered exactly as with an empty ledger), seconds per edit (since the last
checkpoint), seconds per answer and its ratio to the empty ledger's on the same questions. The ratio
is of process CPU time (1 torch thread), which other jobs on a shared machine do not inflate; the
wall-clock ratio and the load average are recorded beside it.

    .venv/bin/python -m bench.many_edits --edits 1000 --json bench/results/serac-1000.json \\
        --plot bench/results/serac-1000.png
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

import kbchat.audit
from kbchat.audit.relations import questions
from kbchat.config import data_dir
from kbchat.engine.local import LocalEngine
from kbchat.errors import KbchatError, ParseError
from kbchat.evaluation.chat import edit_text
from kbchat.evaluation.datasets import EditCase, load_cases
from kbchat.evaluation.metrics import mentions
from methods.requests import EditRequest

DATA = Path(__file__).resolve().parents[2] / "shared/data/counterfact/counterfact-train.json"
CANARIES = Path(kbchat.audit.__file__).parent / "data/canaries.json"
TARGETS = {"reliability": 0.90, "neighbours_unchanged": 0.95, "latency_ratio": 1.2}
MAX_TOKENS = 24


class Reply(NamedTuple):
    text: str
    wall: float  # seconds
    cpu: float  # process CPU seconds: what other jobs on the machine do not inflate
    tokens: int
    in_scope: int  # memory edits used


Asked = dict[str, Reply]


log = functools.partial(print, file=sys.stderr, flush=True)


def distinct_subjects(cases: list[EditCase], n: int) -> list[EditCase]:
    """The first `n` cases whose subject (ignoring case) has not been used yet."""
    seen: set[str] = set()
    out: list[EditCase] = []
    for case in cases:
        key = case.request.subject.casefold()
        if key not in seen:
            seen.add(key)
            out.append(case)
        if len(out) == n:
            break
    return out


def neighbour_questions(cases: list[EditCase], edits: list[EditCase], n: int) -> list[str]:
    """`n` locality prompts of records not edited, then the canary questions, none naming an edited subject."""
    edited_ids = {c.case_id for c in edits}
    subjects = [c.request.subject.casefold() for c in edits]

    def clean(text: str) -> bool:
        low = text.casefold()
        return not any(s in low for s in subjects)

    found: list[str] = []
    for case in cases:
        if case.case_id in edited_ids:
            continue
        for prompt, _ in case.neighborhood[:1]:
            q = f'Complete this sentence: "{prompt} ..."'
            if clean(prompt) and q not in found:
                found.append(q)
        if len(found) >= n:
            break
    canaries = json.loads(CANARIES.read_text())
    found += [c["question"] for c in canaries["fixed"] + canaries["neighbours"] if clean(c["question"])]
    return found


def sampled(order: list[int], made: int, size: int) -> list[int]:
    """A fixed random sample of the first `made` edits: the first `size` of `order` below `made`."""
    return [i for i in order if i < made][:size]


def ask_all(engine: LocalEngine, qs: list[str]) -> Asked:
    out: Asked = {}
    for q in qs:
        wall, cpu = time.perf_counter(), time.process_time()
        answer = engine.ask(q, max_new_tokens=MAX_TOKENS)
        out[q] = Reply(answer.text, time.perf_counter() - wall, time.process_time() - cpu, answer.tokens,
                       len(answer.used_edits))
    return out


def ratio(now: Asked, base: Asked, qs: list[str], clock: str = "cpu", per_token: bool = False) -> float:
    """Seconds per answer (or per token) on `qs` now, over the same with an empty ledger."""
    def rate(asked: Asked) -> float:
        secs = sum(getattr(asked[q], clock) for q in qs)
        return secs / max(1, sum(asked[q].tokens for q in qs)) if per_token else secs
    return round(rate(now) / rate(base), 3)


def make_edit(engine: LocalEngine, case: EditCase, method: str) -> str:
    """'parser', 'fallback' (ParseError: the ready request instead) or 'failed'."""
    try:
        engine.edit(edit_text(case), method=method, audit="off")
        return "parser"
    except ParseError as exc:
        log(f"  parse error for {edit_text(case)!r}: {exc}")
    except KbchatError as exc:
        log(f"  edit failed for {edit_text(case)!r}: {exc}")
        return "failed"
    req = case.request
    try:
        engine.edit_request(EditRequest(req.subject, req.prompt, req.target, req.target_true), method=method)
        return "fallback"
    except KbchatError as exc:
        log(f"  fallback failed for {req.subject!r}: {exc}")
        return "failed"


def checkpoint(engine: LocalEngine, edits: list[EditCase], idx: list[int], neighbours: list[str],
               base: Asked) -> dict[str, Any]:
    """Reliability on the sampled edits, neighbours unchanged, answer latency against `base`."""
    asks = {questions(edits[i].request)[0]: edits[i] for i in idx}
    now = ask_all(engine, [*asks, *neighbours])
    hits = {q: mentions(now[q].text, case.request.target) for q, case in asks.items()}
    same = {q: now[q].text == base[q].text for q in neighbours}
    return {
        "reliability": {"rate": round(sum(hits.values()) / len(hits), 3), "n": len(hits),
                        "edit_in_scope": sum(now[q].in_scope > 0 for q in asks)},
        "neighbours_unchanged": {"rate": round(sum(same.values()) / len(same), 3), "n": len(same),
                                 "any_edit_in_scope": sum(now[q].in_scope > 0 for q in neighbours)},
        "seconds_per_answer": round(sum(v.wall for v in now.values()) / len(now), 3),
        "cpu_seconds_per_answer": round(sum(v.cpu for v in now.values()) / len(now), 3),
        "empty_ledger_cpu_seconds_per_answer": round(sum(base[q].cpu for q in now) / len(now), 3),
        "latency_ratio": ratio(now, base, list(now)),
        "latency_ratio_per_token": ratio(now, base, list(now), per_token=True),
        "latency_ratio_neighbours": ratio(now, base, neighbours),
        "latency_ratio_edited": ratio(now, base, list(asks)),
        "latency_ratio_wall": ratio(now, base, list(now), clock="wall"),
        "load_average": os.getloadavg()[0],
        "reliability_misses": [{"edit": edit_text(asks[q]), "question": q, "answer": now[q].text}
                               for q, ok in hits.items() if not ok][:8],
        "neighbours_changed": [{"question": q, "before": base[q].text, "after": now[q].text}
                               for q, ok in same.items() if not ok][:8],
    }


def cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "unknown")


def table(rows: list[dict[str, Any]]) -> str:
    t = TARGETS
    lines = ["| active edits | reliability | neighbours unchanged | s/edit (CPU s) | s/answer | latency ratio (CPU) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['active_edits']} | {r['reliability']['rate']:.1%} (n={r['reliability']['n']}) | "
                     f"{r['neighbours_unchanged']['rate']:.1%} (n={r['neighbours_unchanged']['n']}) | "
                     f"{r['seconds_per_edit']:.2f} ({r['cpu_seconds_per_edit']:.2f}) | {r['seconds_per_answer']:.2f} | {r['latency_ratio']:.2f} |")
    lines.append(f"| target (1,000 edits) | ≥ {t['reliability']:.0%} | ≥ {t['neighbours_unchanged']:.0%} | | | "
                 f"≤ {t['latency_ratio']} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["active_edits"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(xs, [r["reliability"]["rate"] for r in rows], "o-", label="reliability")
    left.plot(xs, [r["neighbours_unchanged"]["rate"] for r in rows], "s-", label="neighbours unchanged")
    left.axhline(TARGETS["reliability"], ls=":", c="C0")
    left.axhline(TARGETS["neighbours_unchanged"], ls=":", c="C1")
    left.set(xlabel="active serac edits", ylabel="rate", ylim=(0, 1.05), xscale="log")
    left.legend()
    right.plot(xs, [r["latency_ratio"] for r in rows], "o-", c="C2", label="answer CPU time / empty ledger")
    right.plot(xs, [r["latency_ratio_wall"] for r in rows], "x--", c="C3", label="wall clock (shared machine)")
    right.axhline(TARGETS["latency_ratio"], ls=":", c="C2")
    right.set(xlabel="active serac edits", ylabel="ratio", xscale="log")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    cases = load_cases(args.data, skip_unusable=True)
    edits = distinct_subjects(cases, args.edits)
    marks = sorted({int(x) for x in args.checkpoints.split(",") if int(x) <= len(edits)})
    neighbours = neighbour_questions(cases, edits, args.neighbours)
    order = random.Random(args.seed).sample(range(len(edits)), len(edits))
    probe = sorted({i for m in marks for i in sampled(order, m, args.sample)})
    result.update(edits=len(edits), neighbour_questions=len(neighbours), checkpoints=[])
    counts = {"parser": 0, "fallback": 0, "failed": 0}
    with tempfile.TemporaryDirectory() as tmp, \
            LocalEngine.open(db=f"sqlite:///{tmp}/ledger.db", home=data_dir(args.home)) as engine:
        log(f"empty ledger: asking {len(neighbours)} neighbour and {len(probe)} sampled questions")
        base = ask_all(engine, [*neighbours, *(questions(edits[i].request)[0] for i in probe)])
        result["empty_ledger_seconds_per_answer"] = round(sum(v.wall for v in base.values()) / len(base), 3)
        result["empty_ledger_cpu_seconds_per_answer"] = round(sum(v.cpu for v in base.values()) / len(base), 3)
        since, wall, cpu = 0, 0.0, 0.0
        for n, case in enumerate(edits, 1):
            wall0, cpu0 = time.perf_counter(), time.process_time()
            counts[make_edit(engine, case, args.method)] += 1
            wall, cpu, since = wall + time.perf_counter() - wall0, cpu + time.process_time() - cpu0, since + 1
            if n % 10 == 0:
                log(f"{n}/{len(edits)} edits, {wall / since:.2f} s/edit ({cpu / since:.2f} CPU s) since the last "
                    f"checkpoint, load {os.getloadavg()[0]:.1f}, {counts}")
            if n not in marks:
                continue
            row = checkpoint(engine, edits, sampled(order, n, args.sample), neighbours, base)
            row.update(active_edits=n, active_memory_edits=engine.info().active_memory_edits,
                       seconds_per_edit=round(wall / since, 3), cpu_seconds_per_edit=round(cpu / since, 3), **counts)
            since, wall, cpu = 0, 0.0, 0.0
            result["checkpoints"].append(row)
            save(args, result)
            log(f"checkpoint {n}: " + json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}))


def save(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    if args.plot and result["checkpoints"]:
        plot(result["checkpoints"], args.plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--checkpoints", default="100,250,500,1000")
    parser.add_argument("--sample", type=int, default=40, help="edits asked about at each checkpoint")
    parser.add_argument("--neighbours", type=int, default=40, help="locality prompts (the canaries are added)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="serac")
    parser.add_argument("--home", default=None, help="kbchat data dir (default: kbchat.config.data_dir())")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"command": "python -m bench.many_edits " + " ".join(sys.argv[1:]),
                              "machine": {"cpu": cpu_model(), "threads": args.threads}, "method": args.method,
                              "targets": TARGETS, "max_new_tokens": MAX_TOKENS}
    started = time.perf_counter()
    run(args, result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    save(args, result)
    print(table(result["checkpoints"]))


if __name__ == "__main__":
    main()
