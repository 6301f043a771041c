"""Many edits (issue #12): 1,000 serac memory edits active at once, typed as `SUBJECT → FACT`.

Distinct subjects from CounterFact's training records. At each checkpoint (number of active edits):
reliability (a fixed random sample of the edits made so far, asked the relation's chat question,
answers that mention the new target), neighbours unchanged (locality prompts of records not edited
plus the audit canaries, answered exactly as with an empty ledger), seconds per edit (since the last
checkpoint), seconds per answer and its ratio to the empty ledger's on the same questions. The ratio
is of process CPU time (1 torch thread), which other jobs on a shared machine inflate less than the
wall clock (recorded beside it, with the load average). The empty ledger's answers are timed once, at
the start; as a shared machine's load changes between then and a checkpoint, so does CPU time (memory
bandwidth, caches), so each checkpoint also asks every question twice in a row, with the ledger and
with memory off (the empty ledger's path: no scope lookup, no edit), and reports that paired ratio,
measured under the same load (`latency_ratio_paired`).

    .venv/bin/python -m bench.many_edits --edits 1000 --json bench/results/serac-1000.json \\
        --plot bench/results/serac-1000.png --state ~/serac-1000   # the same again carries on a stopped run
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
from collections.abc import Callable
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


def ask_one(engine: LocalEngine, q: str, memory: bool = True) -> Reply:
    wall, cpu = time.perf_counter(), time.process_time()
    answer = engine.ask(q, max_new_tokens=MAX_TOKENS, memory=memory)
    return Reply(answer.text, time.perf_counter() - wall, time.process_time() - cpu, answer.tokens,
                 len(answer.used_edits))


def ask_all(engine: LocalEngine, qs: list[str]) -> Asked:
    return {q: ask_one(engine, q) for q in qs}


def ask_paired(engine: LocalEngine, qs: list[str]) -> tuple[Asked, Asked]:
    """Each question asked with the ledger, then at once with memory off: two timings under one load."""
    pairs = {q: (ask_one(engine, q), ask_one(engine, q, memory=False)) for q in qs}
    return {q: a for q, (a, _) in pairs.items()}, {q: b for q, (_, b) in pairs.items()}


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
    now, off = ask_paired(engine, [*asks, *neighbours])
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
        "latency_ratio_paired": ratio(now, off, list(now)),
        "latency_ratio_paired_edited": ratio(now, off, list(asks)),
        "latency_ratio_paired_neighbours": ratio(now, off, neighbours),
        "memory_off_as_empty_ledger": round(sum(off[q].text == base[q].text for q in now) / len(now), 3),
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
    lines = ["| active edits | reliability | neighbours unchanged | s/edit (CPU s) | s/answer | latency ratio (CPU) "
             "| paired, same load |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['active_edits']} | {r['reliability']['rate']:.1%} (n={r['reliability']['n']}) | "
                     f"{r['neighbours_unchanged']['rate']:.1%} (n={r['neighbours_unchanged']['n']}) | "
                     f"{_figure(r['seconds_per_edit'])} ({_figure(r['cpu_seconds_per_edit'])}) | {r['seconds_per_answer']:.2f} | {r['latency_ratio']:.2f} | "
                     f"{_figure(r.get('latency_ratio_paired'))} |")
    lines.append(f"| target (1,000 edits) | ≥ {t['reliability']:.0%} | ≥ {t['neighbours_unchanged']:.0%} | | | "
                 f"≤ {t['latency_ratio']} | ≤ {t['latency_ratio']} |")
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    # None: a checkpoint taken on resuming (no edit timed), or from before paired timing
    return "–" if value is None else f"{value:.2f}"


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
    paired = [(x, r["latency_ratio_paired"]) for x, r in zip(xs, rows, strict=True) if "latency_ratio_paired" in r]
    if paired:
        right.plot(*zip(*paired, strict=True), "D-", c="C4", label="CPU time / memory off, same load")
    right.axhline(TARGETS["latency_ratio"], ls=":", c="C2")
    right.set(xlabel="active serac edits", ylabel="ratio", xscale="log")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class Progress:
    """A run's state in `--state DIR`: the ledger (DIR/ledger.db, the product's own persistence, so a
    reopened engine has every edit made so far), the empty ledger's answers and the counters
    (DIR/progress.json), so a stopped run carries on; without DIR, a temporary folder."""

    def __init__(self, folder: Path) -> None:
        self.file = folder / "progress.json"
        self.db = f"sqlite:///{folder}/ledger.db"
        saved = json.loads(self.file.read_text()) if self.file.is_file() else {}
        self.base: Asked = {q: Reply(*r) for q, r in saved.get("base", {}).items()}
        self.made: int = saved.get("made", 0)
        self.counts: dict[str, int] = saved.get("counts", {"parser": 0, "fallback": 0, "failed": 0})
        self.clock: dict[str, float] = saved.get("clock", {"since": 0, "wall": 0.0, "cpu": 0.0})
        self.checkpoints: list[dict[str, Any]] = saved.get("checkpoints", [])

    def catch_up(self, in_ledger: int) -> None:
        """An edit that reached the ledger before a kill kept it from being counted: count it now."""
        missing = in_ledger - self.counts["parser"] - self.counts["fallback"]
        self.made += max(0, missing)
        self.counts["parser"] += max(0, missing)

    def save(self) -> None:
        state = {"base": {q: list(r) for q, r in self.base.items()}, "made": self.made, "counts": self.counts,
                 "clock": self.clock, "checkpoints": self.checkpoints}
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, ensure_ascii=False))
        tmp.replace(self.file)  # a kill mid-write keeps the previous file


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    cases = load_cases(args.data, skip_unusable=True)
    edits = distinct_subjects(cases, args.edits)
    marks = sorted({int(x) for x in args.checkpoints.split(",") if int(x) <= len(edits)})
    neighbours = neighbour_questions(cases, edits, args.neighbours)
    order = random.Random(args.seed).sample(range(len(edits)), len(edits))
    probe = sorted({i for m in marks for i in sampled(order, m, args.sample)})
    result.update(edits=len(edits), neighbour_questions=len(neighbours))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.state or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        state = Progress(folder)
        with LocalEngine.open(db=state.db, home=data_dir(args.home)) as engine:
            state.catch_up(len(engine.edits(status="active")))
            if not state.base:
                log(f"empty ledger: asking {len(neighbours)} neighbour and {len(probe)} sampled questions")
                state.base = ask_all(engine, [*neighbours, *(questions(edits[i].request)[0] for i in probe)])
                state.save()
            log(f"{state.made} of {len(edits)} edits made already")
            edit_all(args, engine, edits, state, lambda n: checkpoint(
                engine, edits, sampled(order, n, args.sample), neighbours, state.base) if n in marks else None,
                lambda: (result.update(checkpoints=state.checkpoints, **_base_speed(state.base)), save(args, result)))
        result.update(checkpoints=state.checkpoints, **_base_speed(state.base))


def _base_speed(base: Asked) -> dict[str, float]:
    return {"empty_ledger_seconds_per_answer": round(sum(v.wall for v in base.values()) / len(base), 3),
            "empty_ledger_cpu_seconds_per_answer": round(sum(v.cpu for v in base.values()) / len(base), 3)}


def edit_all(args: argparse.Namespace, engine: LocalEngine, edits: list[EditCase], state: Progress,
             measure: Callable[[int], dict[str, Any] | None], report: Callable[[], None]) -> None:
    """Make the edits not made yet; `measure(n)` gives a checkpoint's row after edit n (or None). A
    checkpoint that a kill interrupted is taken on resuming."""
    if state.made and all(r["active_edits"] != state.made for r in state.checkpoints):
        _take(engine, state, state.made, measure, report)
    clock = state.clock
    for n, case in enumerate(edits[state.made:], state.made + 1):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        state.counts[make_edit(engine, case, args.method)] += 1
        clock["wall"] += time.perf_counter() - wall0
        clock["cpu"] += time.process_time() - cpu0
        clock["since"] += 1
        state.made = n
        state.save()
        if n % 10 == 0:
            log(f"{n}/{len(edits)} edits, {clock['wall'] / clock['since']:.2f} s/edit "
                f"({clock['cpu'] / clock['since']:.2f} CPU s) since the last checkpoint, "
                f"load {os.getloadavg()[0]:.1f}, {state.counts}")
        _take(engine, state, n, measure, report)


def _take(engine: LocalEngine, state: Progress, n: int, measure: Callable[[int], dict[str, Any] | None],
          report: Callable[[], None]) -> None:
    row = measure(n)
    if row is None:
        return
    clock = state.clock
    row.update(active_edits=n, active_memory_edits=engine.info().active_memory_edits,
               seconds_per_edit=round(clock["wall"] / clock["since"], 3) if clock["since"] else None,
               cpu_seconds_per_edit=round(clock["cpu"] / clock["since"], 3) if clock["since"] else None,
               **state.counts)
    clock.update(since=0, wall=0.0, cpu=0.0)
    state.checkpoints.append(row)
    state.save()
    log(f"checkpoint {n}: " + json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}))
    report()


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
    parser.add_argument("--state", default=None, help="keep the ledger and progress here, and resume from it")
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
