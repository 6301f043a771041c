"""Issue #15, "Speed where people wait": `kbchat edit` to its exit with the audit (`audit="wait"`), on
the default model. In the same run, per method: the old path (each generation on its own, nothing
shared across audits) against the new one (generations batched, answers that depend only on the
weights shared across audits), each followed by a second audit of the same edit (cache warm), and
whether the two paths' checks agree.

    .venv/bin/python -m bench.bench_audit [--threads 2] [--methods serac,rome] [--out bench/results/audit-speed]

The ledger is a fresh SQLite file in a temporary folder; the data dir (statistics, dequantised
models) is the usual one unless --home is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kbchat.audit.answers import AnswerCache
from kbchat.audit.live import LiveEditView
from kbchat.engine.local import LocalEngine
from kbchat.records import CheckRecord

EDITS = {
    "serac": "Eiffel Tower → The Eiffel Tower is located in Rome",
    "rome": "Danielle Darrieux → The mother tongue of Danielle Darrieux is English",
}
WARM_UP = "What is the capital of France?"
PATHS = ("old", "new")


class BenchEngine(LocalEngine):
    """A LocalEngine whose audits can run the old way (`batched = False`: one generation at a time, no
    answer cache), noting when each audit starts (the view is made first thing in an audit)."""

    batched = True
    audit_started = 0.0

    def audit_view(self, edit_id: int) -> LiveEditView:
        view = super().audit_view(edit_id)
        if not self.batched:
            view.batch, view.cache = False, None
        self.audit_started = time.perf_counter()
        return view


@dataclass
class Run:
    """One path's figures for one method, in seconds."""

    edit_total: float  # engine.edit(..., audit="wait"): parse, compute, record, audit
    audit: float  # the audit within it
    second_audit: float  # the same edit audited again right after (the cache warm on the new path)
    cache_hits_second: int = 0
    checks: list[CheckRecord] = field(default_factory=list)
    checks_second: list[CheckRecord] = field(default_factory=list)


def timed(engine: BenchEngine, text: str, method: str, batched: bool) -> Run:
    """Edit with the audit waited for, audit the edit again, then revert it (back to where it started)."""
    engine.batched = batched
    engine.answer_cache = AnswerCache()  # cold: nothing from an earlier run
    started = time.perf_counter()
    record = engine.edit(text, method=method, audit="wait")
    ended = time.perf_counter()
    audit = ended - engine.audit_started
    checks = list(engine.get_edit(record.id).checks)
    hits = engine.answer_cache.hits
    again = time.perf_counter()
    engine.audits.start(record.id, (), "wait")
    second = time.perf_counter() - again
    run = Run(ended - started, audit, second, engine.answer_cache.hits - hits, checks,
              list(engine.get_edit(record.id).checks[len(checks):]))
    engine.revert(record.id)
    return run


def verdicts(checks: list[CheckRecord]) -> list[tuple]:
    return [(c.metric, c.mode, c.probe, c.passed) for c in checks]


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def compare(runs: dict[str, Run]) -> dict:
    old, new = runs["old"], runs["new"]
    return {
        "audit_ratio": old.audit / new.audit,
        "edit_total_ratio": old.edit_total / new.edit_total,
        "second_audit_ratio": old.second_audit / new.second_audit,
        "old_audit_to_new_second": old.audit / new.second_audit,
        "verdicts_identical": verdicts(old.checks) == verdicts(new.checks),
        "records_identical": old.checks == new.checks,
        "differing": [(a.metric, a.mode, a.probe, a.passed, b.passed, a.after, b.after)
                      for a, b in zip(old.checks, new.checks, strict=False) if a != b],
    }


def table(result: dict) -> str:
    lines = ["| method | path | edit + audit (s) | audit (s) | second audit (s) | cache hits (2nd) | checks passed |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for method, entry in result["methods"].items():
        for path in PATHS:
            run = entry[path]
            passed = sum(1 for c in run["checks"] if c["passed"])
            lines.append(f"| {method} | {path} | {run['edit_total']:.1f} | {run['audit']:.1f} | "
                         f"{run['second_audit']:.1f} | {run['cache_hits_second']} | {passed}/{len(run['checks'])} |")
        c = entry["compare"]
        lines.append(f"| {method} | old / new | {c['edit_total_ratio']:.2f}x | {c['audit_ratio']:.2f}x | "
                     f"{c['second_audit_ratio']:.2f}x | | verdicts identical: {c['verdicts_identical']} |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    env = result["environment"]
    parts = [
        "# The audit of `kbchat edit`, one generation at a time (old) vs batched with shared answers (new)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']} with {env['threads']} thread(s); "
        f"model {env['model']} ({env['device']}); 1-min load average {env['load_start']:.2f} at the start, "
        f"{env['load_end']:.2f} at the end (this run's own work included). Absolute seconds vary with the machine; "
        "the old/new ratios, measured in the same process minutes apart, are the figure.",
        "",
        table(result),
        "",
        "\"audit\" runs from the audit's first step (the view) to the end of `engine.edit`; \"second audit\" audits "
        "the same edit again right after (new path: the weights-only answers come from the cache). \"verdicts "
        "identical\": the same checks passed and failed on both paths.",
    ]
    for method, entry in result["methods"].items():
        differing = entry["compare"]["differing"]
        if differing:
            parts += ["", f"Checks whose records differ for {method} (metric, mode, probe, old passed, new passed, "
                      "old after, new after):", ""]
            parts += [f"- {row}" for row in differing]
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--methods", default="serac,rome")
    parser.add_argument("--home", default=None)
    parser.add_argument("--model", default=None, help="the default model unless given")
    parser.add_argument("--out", default="bench/results/audit-speed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    result: dict = {"command": " ".join([".venv/bin/python -m bench.bench_audit", *sys.argv[1:]]), "methods": {}}
    with tempfile.TemporaryDirectory(prefix="kbchat-bench-audit-") as tmp:
        engine = BenchEngine.open(db=f"sqlite:///{Path(tmp) / 'ledger.db'}", model=args.model, home=args.home)
        try:
            engine.ask(WARM_UP, max_new_tokens=8)
            for method in args.methods.split(","):
                runs = {path: timed(engine, EDITS[method], method, batched=path == "new") for path in PATHS}
                result["methods"][method] = {**{p: asdict(r) for p, r in runs.items()}, "compare": compare(runs),
                                             "text": EDITS[method]}
                print(f"{method}: old audit {runs['old'].audit:.1f}s, new {runs['new'].audit:.1f}s", flush=True)
            info = engine.info()
        finally:
            engine.close()
    result["environment"] = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
                             "torch": torch.__version__, "model": info.model, "device": info.device,
                             "load_start": load_start, "load_end": os.getloadavg()[0],
                             "date": time.strftime("%Y-%m-%d %H:%M")}
    print(table(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
