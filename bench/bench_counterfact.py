"""Weight-editing methods on CounterFact with the default model, straight through the `methods` library.

Single editing (each delta undone before the next case):
    .venv/bin/python -m bench.bench_counterfact --methods rome,memit,ft --limit 20
Sequential editing (all kept; retention and neighbourhood measured after the last edit):
    .venv/bin/python -m bench.bench_counterfact --methods alphaedit,memit --sequential 200
The learned editors beside ROME, timed in the same run (each editor loaded once, before its first edit
is timed, as the app keeps it), on CounterFact val or the zsRE rows training never saw:
    .venv/bin/python -m bench.bench_counterfact --methods rome,mend,instructedit --limit 100
    .venv/bin/python -m bench.bench_counterfact --data zsre-heldout --methods rome,mend,instructedit --limit 100

Figures (ROME's CounterFact definitions):
- efficacy: P(new) > P(old) on the edit prompt (summed log-probs);
- paraphrase efficacy: the same on the paraphrase prompts;
- neighbourhood preservation: fraction of neighbourhood prompts whose preference between the true and
  the new object is the same after the edit as before;
- generation: the greedy continuation of the edit prompt mentions the new object;
- seconds per edit (median; the one-time statistics are timed separately).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import methods
from kbchat.audit.probes import GENERALIZATION, LOCALITY, RELIABILITY, with_metric
from kbchat.config import data_dir
from kbchat.evaluation.datasets import EditCase, load_cases
from kbchat.evaluation.metrics import mentions, target_logprobs
from kbchat.evaluation.probes import case_probes
from kbchat.runtime.decoding import completion_input_ids, greedy_text
from kbchat.runtime.loading import load_model
from methods import StatsCache
from methods.mend import LoadedEditors

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-val.json"


def preferences(model, tokenizer, prompts: list[str], new: str, old: str) -> list[bool]:
    """For each prompt: does the model prefer `new` over `old`?"""
    pairs = [(p, new) for p in prompts] + [(p, old) for p in prompts]
    scores = target_logprobs(model, tokenizer, pairs)
    n = len(prompts)
    return [scores[i] > scores[n + i] for i in range(n)]


# Figure -> the probes it is measured on: all of the case's, not `kbchat bench`'s first three.
FIGURES = {"edit": RELIABILITY, "paraphrase": GENERALIZATION, "neighbourhood": LOCALITY}


def measure(model, tokenizer, case: EditCase) -> dict[str, list[bool]]:
    r = case.request
    probes = case_probes(case, max_probes=None)
    texts = {figure: [p.text for p in with_metric(probes, metric)] for figure, metric in FIGURES.items()}
    return {k: preferences(model, tokenizer, v, r.target, r.target_true) if v else [] for k, v in texts.items()}


def mean(values: list[bool | float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def method_options(impl: methods.Method, model, stats, model_id: str, editors: LoadedEditors,
                   search: tuple[str, ...] = (), overrides: dict | None = None) -> dict:
    """What `impl.compute` needs besides the request: `overrides` as its hparams, statistics, its trained
    editor (loaded once; from `search` first, then the shipped ones)."""
    options: dict = {"hparams": impl.hparams_from_dict(model, overrides)} if overrides else {}
    if impl.uses_statistics:
        options.update(stats=stats, model_id=model_id)
    if impl.editor_kind is not None:
        options["editor"] = editors.get(model, impl.editor_kind, search, model_id)
    return options


def run_single(model, tokenizer, cases, method, stats, model_id, search: tuple[str, ...] = (),
               overrides: dict | None = None) -> dict:
    impl = methods.get(method)
    rows, seconds = [], []
    editors = LoadedEditors()
    method_options(impl, model, stats, model_id, editors, search, overrides)  # the one-time load is not an edit's time
    for case in cases:
        before = measure(model, tokenizer, case)
        started = time.perf_counter()
        options = method_options(impl, model, stats, model_id, editors, search, overrides)
        delta = impl.compute(model, tokenizer, [case.request], **options)
        seconds.append(time.perf_counter() - started)
        applied = delta.apply(model)
        after = measure(model, tokenizer, case)
        prompt_ids = completion_input_ids(tokenizer, case.request.text, model.device)
        generated = greedy_text(model, tokenizer, prompt_ids, max_new_tokens=12)
        applied.undo()
        rows.append({
            "efficacy": mean(after["edit"]),
            "paraphrase": mean(after["paraphrase"]),
            "neighbourhood": mean([a == b for a, b in zip(after["neighbourhood"], before["neighbourhood"],
                                                          strict=True)]),
            "generation": float(mentions(generated, case.request.target)),
        })
    return summarise(rows, seconds)


class SequentialState:
    """A sequential run's progress on disk, so a stopped run carries on where it was: each delta as
    `NNNN.delta` (methods.Delta bytes) and `progress.json` (measures before editing, seconds per edit,
    immediate efficacy, the curve so far)."""

    def __init__(self, folder: Path | None, method: str, cases: list[EditCase]) -> None:
        self.folder = folder
        self.key = {"method": method, "cases": [c.case_id for c in cases]}
        self.progress: dict = {"before": None, "seconds": [], "immediate": [], "curve": {}}
        if folder and (folder / "progress.json").is_file():
            saved = json.loads((folder / "progress.json").read_text())
            if saved["key"] != self.key:
                raise SystemExit(f"bench_counterfact: {folder} holds another run (method or cases)")
            self.progress = saved["progress"]

    def deltas(self) -> list[methods.Delta]:
        n = len(self.progress["seconds"])
        return [methods.Delta.from_bytes((self.folder / f"{i:04d}.delta").read_bytes()) for i in range(n)]

    def add(self, delta: methods.Delta, seconds: float, immediate: bool) -> None:
        if self.folder:
            (self.folder / f"{len(self.progress['seconds']):04d}.delta").write_bytes(delta.to_bytes())
        self.progress["seconds"].append(seconds)
        self.progress["immediate"].append(immediate)
        self.save()

    def save(self) -> None:
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / "progress.json.tmp"
            tmp.write_text(json.dumps({"key": self.key, "progress": self.progress}))
            tmp.replace(self.folder / "progress.json")  # a kill mid-write keeps the previous file


def run_sequential(model, tokenizer, cases, method, stats, model_id, every: int = 50,
                   state_dir: Path | None = None, search: tuple[str, ...] = (),
                   overrides: dict | None = None) -> dict:
    """Edit every case in turn, keeping all edits. Figures after the last edit (efficacy there is
    retention), plus `immediate` (efficacy right after each edit) and, every `every` edits, retention
    and neighbourhood preservation of the edits made so far: the curve that shows collapse, if any.
    With `state_dir`, a stopped run resumes: its saved deltas are applied again, in order."""
    impl = methods.get(method)
    editors = LoadedEditors()
    state = SequentialState(state_dir, method, cases)
    if state.progress["before"] is None:
        state.progress["before"] = [measure(model, tokenizer, c) for c in cases]
        state.save()
    before, curve = state.progress["before"], state.progress["curve"]
    deltas = state.deltas()
    originals: dict[str, torch.Tensor] = {}  # each module's weight before the first delta: one copy, not one per edit
    for d in deltas:
        apply_keeping_first(model, d, originals)
    for i, case in enumerate(cases[len(deltas):], len(deltas) + 1):
        started = time.perf_counter()
        kwargs = method_options(impl, model, stats, model_id, editors, search, overrides)
        if impl.protects_prior:
            kwargs["prior"] = deltas
        delta = impl.compute(model, tokenizer, [case.request], **kwargs)
        seconds = time.perf_counter() - started
        deltas.append(delta)
        apply_keeping_first(model, delta, originals)
        r = case.request
        if i % every == 0 and i < len(cases):
            curve[str(i)] = summarise(_sequential_rows(model, tokenizer, cases[:i], before[:i]),
                                      state.progress["seconds"] + [seconds])
            print(f"  {method} after {i} edits: {json.dumps(curve[str(i)])}", flush=True)
        state.add(delta, seconds, preferences(model, tokenizer, [r.text], r.target, r.target_true)[0])
    out = summarise(_sequential_rows(model, tokenizer, cases, before), state.progress["seconds"])
    methods.Applied(model, originals).undo()
    out["immediate_efficacy"] = round(100 * mean(state.progress["immediate"]), 1)
    out["curve"] = {k: {m: v[m] for m in ("efficacy", "paraphrase", "neighbourhood")} for k, v in curve.items()}
    return out


def apply_keeping_first(model, delta: methods.Delta, originals: dict[str, torch.Tensor]) -> None:
    """Apply `delta`, adding to `originals` the weights of modules no earlier delta touched. A handle
    per edit would hold a copy of the edited layers per edit: 1,000 AlphaEdit edits outgrew 24 GiB."""
    for name, weight in delta.apply(model).saved.items():
        originals.setdefault(name, weight)


def _sequential_rows(model, tokenizer, cases, before) -> list[dict]:
    rows = []
    for case, was in zip(cases, before, strict=True):
        after = measure(model, tokenizer, case)
        rows.append({
            "efficacy": mean(after["edit"]),  # retention: the edit still holds after all later ones
            "paraphrase": mean(after["paraphrase"]),
            "neighbourhood": mean([a == b for a, b in zip(after["neighbourhood"], was["neighbourhood"],
                                                          strict=True)]),
        })
    return rows


def summarise(rows: list[dict], seconds: list[float]) -> dict:
    keys = rows[0].keys() if rows else []
    out = {k: round(100 * mean([r[k] for r in rows if r[k] == r[k]]), 1) for k in keys}
    out["seconds_per_edit_median"] = round(statistics.median(seconds), 2) if seconds else None
    out["cases"] = len(rows)
    return out


def prepare_statistics(model, tokenizer, names: list[str], stats: StatsCache, model_id: str) -> float:
    """Computes once the second moments every method in `names` needs (so edits are timed without
    them); returns the seconds it took."""
    started = time.perf_counter()
    layers = set()
    for name in names:
        impl = methods.get(name)
        if impl.uses_statistics:
            hp = impl.hparams(model)
            layers.update(getattr(hp, "layers", None) or [hp.layer])
            spec = hp.stats
    if layers:
        arch = methods.architecture.architecture_of(model)
        stats.second_moments(model, tokenizer, [arch.mlp_out_name(i) for i in sorted(layers)], spec,
                             model_id=model_id)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a dataset file, or zsre-heldout: the zsRE rows "
                                                                   "no shipped editor was trained on")
    parser.add_argument("--methods", default="rome,memit,ft")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--sequential", type=int, default=0, help="number of sequential edits (0: single)")
    parser.add_argument("--home", default=None, help="data dir with the model cache and statistics")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--every", type=int, default=50, help="sequential: measure the curve every N edits")
    parser.add_argument("--state", default=None, help="sequential: keep progress in this folder (one per method) "
                                                      "and resume from it")
    parser.add_argument("--editors", action="append", default=[],
                        help="a trained editor file or folder, searched before the shipped ones (repeatable)")
    parser.add_argument("--hparams", type=json.loads, default={},
                        help='hyperparameter overrides per method, JSON: \'{"mend": {"whiten": 0.01}}\'')
    parser.add_argument("--torch-threads", type=int, default=None, help="e.g. 1 when two benchmarks share 2 cores")
    parser.add_argument("--plot", default=None, help="sequential: draw the curve to this PNG (bench.plot_sequential)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    home = data_dir(args.home or tempfile.mkdtemp(prefix="kbchat-bench-"))
    loaded = load_model(None, home)
    model, tokenizer = loaded.model, loaded.tokenizer
    model_id = methods.model_fingerprint(model)
    stats = StatsCache(home / "stats")
    n = args.sequential or args.limit
    label = args.data
    if args.data == "zsre-heldout":
        from bench.run_tables import held_out_file

        args.data = held_out_file()
    cases = [c for c in load_cases(args.data, limit=n * 2) if c.request.target_true][:n]

    stats_seconds = prepare_statistics(model, tokenizer, args.methods.split(","), stats, model_id)
    torch.manual_seed(0)
    results = {"command": "python -m bench.bench_counterfact " + " ".join(sys.argv[1:]), "data": label,
               "cases": len(cases), "statistics_seconds": round(stats_seconds, 1),
               "hparams": args.hparams, "mode": f"sequential {n}" if args.sequential else "single", "torch_threads": torch.get_num_threads(),
               "methods": {}}
    for name in args.methods.split(","):
        if args.sequential:
            state = Path(args.state) / name if args.state else None
            results["methods"][name] = run_sequential(model, tokenizer, cases, name, stats, model_id, args.every, state,
                                                      tuple(args.editors), args.hparams.get(name))
        else:
            results["methods"][name] = run_single(model, tokenizer, cases, name, stats, model_id, tuple(args.editors),
                                                  args.hparams.get(name))
        print(name, json.dumps(results["methods"][name]), flush=True)
        if args.json:  # after each method: a long run that is stopped keeps what it measured
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.plot and args.sequential:
        from bench.plot_sequential import plot

        plot(results, args.plot)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
