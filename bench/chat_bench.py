"""The chat benchmark (issue #12) on the default model: edits typed as `SUBJECT → FACT`, answers to
chat questions, subject names intact, fluency, follow-ups, neighbours (kbchat.evaluation.chat).

Several methods run in one process share the unedited answers (each question is asked once with no
edit active), and `--resume` carries on a run that was stopped: the cases its JSON file already holds
are scored again from their saved answers, not asked again.

    .venv/bin/python -m bench.chat_bench --limit 200 --methods serac,rome,memit,alphaedit,ike \\
        --json 'bench/results/chat-{method}-val200.json' --resume

`--own-answer` optimises serac's value keeping the model's own answer (`EngineSettings.serac_own_answer`);
`--no-quote-facts` leaves out the system message that quotes the fact (the patch alone); `--serac-scales`
sets the patch scales serac tries (the smallest whose answer names the new object is kept);
serac's answers are steered by default (`kbchat.runtime.steering`: the unpatched model words them, the
patched one writes only the new object); `--no-serac-steer` gives the patched answers,
`--no-serac-steer-unquoted` lets the unpatched model read the quoted facts.

`--unedited FILE` (any method's run on the same data and model, e.g. `chat-rome-val200.json`) lends
its unedited answers, so they are not asked again: greedy decoding with no edit active gives the
same text in any process (the rome and serac 200-case runs agree on all 1,400 they share).

A long run can be shared by processes, `--shard 0/2` and `--shard 1/2` each with its own --json,
then merged with `--also` each shard's file (their cases are scored from their saved answers, not asked).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kbchat.config import EngineSettings, data_dir
from kbchat.engine.local import LocalEngine
from kbchat.evaluation.answer_fluency import answer_nll
from kbchat.evaluation.chat import UneditedAnswers, run_chat_bench
from kbchat.evaluation.datasets import load_cases
from kbchat.evaluation.tables import format_chat_table

DATA = Path(__file__).resolve().parents[2] / "shared/data/counterfact/counterfact-val.json"


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def json_path(args: argparse.Namespace, method: str) -> Path | None:
    if not args.json:
        return None
    if "{method}" not in args.json and len(args.methods) > 1:
        raise SystemExit("chat_bench: with several --methods, --json must hold '{method}'")
    return Path(args.json.format(method=method))


def earlier(path: Path | None, args: argparse.Namespace, method: str) -> tuple[list[dict[str, Any]], float]:
    """The per-case rows and seconds of an earlier run in `path` of the same data, method and mode,
    with the rows of the `--also` files (other shards of the run)."""
    rows, seconds = [], 0.0
    paths = ([path] if args.resume and path and path.is_file() else []) + [Path(p) for p in args.also]
    for one in paths:
        old = json.loads(one.read_text())
        same = old.get("method") == method and old.get("sequential") is False and old.get("data") == args.data
        if not same or args.sequential:
            raise SystemExit(f"chat_bench: {one} holds another run (method, data or mode): cannot resume it")
        rows += old["per_case"]
        seconds += float(old.get("seconds", 0.0))
    return rows, seconds


def lent(args: argparse.Namespace, model: str) -> UneditedAnswers:
    """The unedited answers of the `--unedited` files: runs on the same data (file name; case ids key
    the told answers) and model (runs saved before the model was recorded ran the default one)."""
    answered = UneditedAnswers()
    for one in map(Path, args.unedited):
        old = json.loads(one.read_text())
        if Path(old.get("data", "")).name != Path(args.data).name or old.get("model", model) != model:
            raise SystemExit(f"chat_bench: {one} is a run on other data or another model "
                             f"({old.get('data')}, {old.get('model')}): its answers do not apply")
        for row in old["per_case"]:
            answered.learn(row)
    return answered


def save(result: dict, path: Path | None, args: argparse.Namespace, seconds: float, model: str) -> None:
    """Write `result` (the run so far, or all of it) to `path`, with the command and its Markdown table."""
    result.update(command="python -m bench.chat_bench " + " ".join(sys.argv[1:]), data=args.data,
                  seconds=round(seconds, 1), threads=args.threads, model=model)
    if path:
        path.write_text(json.dumps(result, indent=1, ensure_ascii=False))
        path.with_suffix(".md").write_text(f"`{result['command']}`\n\n{format_chat_table(result)}\n")


def arguments() -> argparse.ArgumentParser:
    """The command line: the cases, the methods, the run's files and the engine's serac settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--methods", type=lambda s: s.split(","), default=["serac"])
    parser.add_argument("--home", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--resume", action="store_true", help="carry on the run each --json file holds")
    parser.add_argument("--shard", type=lambda s: tuple(int(x) for x in s.split("/")), default=(0, 1),
                        help="K/N: ask only the cases at positions K mod N (N processes share a run)")
    parser.add_argument("--also", action="append", default=[],
                        help="another shard's --json file: its cases are scored from it, not asked")
    parser.add_argument("--unedited", action="append", default=[],
                        help="an earlier run's --json file on the same data: its unedited answers are not asked again")
    parser.add_argument("--json", default=None, help="output file; '{method}' in it is the method's name")
    parser.add_argument("--no-quote-facts", action="store_true",
                        help="serac without its system message quoting the fact (the patch alone)")
    parser.add_argument("--own-answer", action="store_true",
                        help="serac's value optimised keeping the model's own answer (EngineSettings.serac_own_answer)")
    parser.add_argument("--serac-scales", type=lambda s: tuple(float(x) for x in s.split(",")),
                        default=EngineSettings.serac_scales,
                        help="the patch's scales serac tries, in order (EngineSettings.serac_scales)")
    parser.add_argument("--serac-check-wordings", type=int, default=EngineSettings.serac_check_wordings,
                        help="how many of the relation's questions serac's strength check asks")
    parser.add_argument("--serac-check-follow-up", action=argparse.BooleanOptionalAction,
                        default=EngineSettings.serac_check_follow_up,
                        help="serac's strength check also asks the relation's question as a follow-up")
    parser.add_argument("--serac-steer", action=argparse.BooleanOptionalAction,
                        default=EngineSettings.serac_steer,
                        help="serac answers worded by the unpatched model, the new object by the patched one")
    parser.add_argument("--serac-steer-unquoted", action=argparse.BooleanOptionalAction,
                        default=EngineSettings.serac_steer_unquoted,
                        help="...the unpatched model reading the conversation without the quoted facts")
    parser.add_argument("--serac-steer-fallback", action=argparse.BooleanOptionalAction,
                        default=EngineSettings.serac_steer_fallback,
                        help="...a steered answer whose first sentence misses the new object replaced by the patched one")
    parser.add_argument("--weight-steer", action=argparse.BooleanOptionalAction, default=EngineSettings.weight_steer,
                        help="weight edits whose subject is named steered the same way (EngineSettings.weight_steer)")
    return parser


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    if len(args.shard) != 2 or not 0 <= args.shard[0] < args.shard[1]:
        parser.error(f"--shard must be K/N with 0 <= K < N, not {'/'.join(map(str, args.shard))}")
    torch.set_num_threads(args.threads)
    cases = load_cases(args.data, limit=args.limit, skip_unusable=True)
    with tempfile.TemporaryDirectory() as tmp, \
            LocalEngine.open(db=f"sqlite:///{tmp}/ledger.db", home=data_dir(args.home),
                             settings=EngineSettings(quote_facts=not args.no_quote_facts,
                                                    serac_own_answer=args.own_answer,
                                                    serac_scales=args.serac_scales,
                                                    serac_check_wordings=args.serac_check_wordings,
                                                    serac_check_follow_up=args.serac_check_follow_up,
                                                    serac_steer=args.serac_steer,
                                                    serac_steer_unquoted=args.serac_steer_unquoted,
                                                    serac_steer_fallback=args.serac_steer_fallback,
                                                    weight_steer=args.weight_steer)) as engine:
        model = engine.runtime.name
        answered = lent(args, model)  # unedited answers, shared by the methods
        for method in args.methods:
            path = json_path(args, method)
            done, spent = earlier(path, args, method)
            started = time.perf_counter() - spent
            log(f"{method}: {len(done)} cases from an earlier run, {len(cases)} in all")
            result = run_chat_bench(engine, cases, method, answer_nll(engine.runtime), log=log,
                                    sequential=args.sequential, done=done, answered=answered, shard=args.shard,
                                    partial=lambda r, p=path, t=started: save(r, p, args, time.perf_counter() - t, model))
            save(result, path, args, time.perf_counter() - started, model)
            print(format_chat_table(result))


if __name__ == "__main__":
    main()
