"""Chat decoding speed of the default model (issue #15): tokens/s of decoding variants in one run,
interleaved (ABBA) so drift in machine load hits all alike, with the share of answers identical to
float32 greedy; then process start → first token of `kbchat ask` in fresh processes, split.

Variants (12 chat questions, greedy, `--new-tokens` each):
  a  HF `model.generate(do_sample=False)`, float32 (the baseline "plain generate")
  b  our `stream_tokens`, float32 (what kbchat runs today)
  c  `stream_tokens` with the weights in bfloat16 (`KBCHAT_DTYPE=bfloat16`): oneDNN for passes over many
     tokens, PyTorch's own GEMV for one-token steps (`kbchat.runtime.onednn`, shipped)
  c0 as c with oneDNN for every pass (bfloat16 before the per-pass switch)
  d  a static KV cache (HF `StaticCache`) in a copy of our greedy loop, float32, eager
  e  d with the model `torch.compile`d (module hooks included), compile time reported apart

    .venv/bin/python -m bench.bench_speed [--threads 1] [--rounds 2] [--new-tokens 48] [--no-compile]
                                          [--out bench/results/speed-decoding]
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kbchat.config import data_dir
from kbchat.runtime.decoding import chat_input_ids, greedy_text
from kbchat.runtime.loading import load_model

QUESTIONS = (
    "Where is the Eiffel Tower?", "What is the capital of Japan?", "Who developed the iPhone?",
    "In which country is Mount Fuji?", "What language is spoken in Brazil?", "Who founded Microsoft?",
    "Who wrote Romeo and Juliet?", "How do I boil an egg?", "Why is the sky blue?",
    "Give me three tips for sleeping better.", "What is a prime number?", "Explain what a CPU does.",
)
ASK = "Where is the Eiffel Tower?"
Decoder = Callable[[torch.Tensor], tuple[str, int]]  # input ids -> (answer text, tokens produced)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


# -- decoders -------------------------------------------------------------------------------------------


def plain_generate(model, tok, limit: int) -> Decoder:
    """(a): HF generate, greedy, from the same chat ids; tokens produced include a final EOS."""
    def run(ids: torch.Tensor) -> tuple[str, int]:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=limit,
                             pad_token_id=tok.pad_token_id)
        new = out[0, ids.shape[1]:]
        return tok.decode(new, skip_special_tokens=True), int(new.shape[0])
    return run


def ours(model, tok, limit: int) -> Decoder:
    """(b), (c): kbchat's `stream_tokens`; tokens produced = forward passes (one per token, EOS included)."""
    def run(ids: torch.Tensor) -> tuple[str, int]:
        count = [0]
        handle = model.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        try:
            return greedy_text(model, tok, ids, limit), count[0]
        finally:
            handle.remove()
    return run


@torch.no_grad()
def static_greedy(model, step, tok, ids: torch.Tensor, limit: int) -> tuple[str, int]:
    """Our greedy loop on a `StaticCache`: eager prefill, then `step` (the model or its compiled form)."""
    from transformers import StaticCache

    eos = {tok.eos_token_id, *_ids(getattr(model.generation_config, "eos_token_id", None))}
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + limit)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    new: list[int] = []
    for n in range(limit):
        token = int(out.logits[0, -1].argmax())
        if token in eos:
            return tok.decode(new, skip_special_tokens=True), n + 1
        new.append(token)
        if n + 1 == limit:
            break
        position = torch.tensor([ids.shape[1] + n])
        out = step(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True,
                   cache_position=position)
    return tok.decode(new, skip_special_tokens=True), limit


def _ids(value) -> list[int]:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def compiled(model, tok, limit: int, first_ids: torch.Tensor) -> tuple[Decoder | None, dict]:
    """(e): `torch.compile(model)` (the module, so its forward hooks run: a `ScopedDeltas` table with one
    delta attached, as kbchat has) driving `static_greedy`; compiled on the first answer, timed apart."""
    from torch._dynamo.utils import counters

    from methods.scoped import ScopedDeltas

    patches = ScopedDeltas(model)
    patches.add("probe", _probe(model), positions="all")
    step = torch.compile(model, dynamic=False)
    info: dict = {}
    try:
        started = time.perf_counter()
        static_greedy(model, step, tok, first_ids, limit)
        info["compile_seconds"] = round(time.perf_counter() - started, 1)
        info["graph_breaks"] = dict(counters["graph_break"])
    except Exception as exc:  # report any failure of compilation with its message
        info["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
        return None, info
    info["hooks_check"] = _hooks_check(model, step, tok, first_ids, patches)
    return (lambda ids: static_greedy(model, step, tok, ids, limit)), info


def _probe(model):
    """A random rank-1 change of one MLP output, strong enough to change answers when selected."""
    from methods import Delta
    from methods.delta import Update

    name = "model.layers.3.mlp.down_proj"
    out, width = dict(model.named_modules())[name].weight.shape
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(out, 1, generator=generator) * 0.5
    right = torch.randn(width, 1, generator=generator) * 0.5
    return Delta(method="probe", updates=(Update(module=name, left=left, right=right),))


def _hooks_check(model, step, tok, ids, patches) -> dict:
    """Whether a selected patch (acting on every position) changes the compiled answer as it does the eager one."""
    with patches.select(["probe"]):
        eager = static_greedy(model, model, tok, ids, 16)[0]
        started = time.perf_counter()
        fast = static_greedy(model, step, tok, ids, 16)[0]
        seconds = time.perf_counter() - started
    plain = static_greedy(model, model, tok, ids, 16)[0]
    return {"patched_eager": eager, "patched_compiled": fast, "unpatched": plain,
            "compiled_follows_patch": eager == fast, "patch_changes_answer": eager != plain,
            "patched_seconds_incl_recompile": round(seconds, 1)}


# -- the throughput run ---------------------------------------------------------------------------------


def throughput(decoders: dict[str, Decoder], prompts: list[torch.Tensor], rounds: int) -> dict:
    """Per variant: tokens, seconds and answers; rounds alternate the order (ABBA) of whole variants."""
    stats = {name: {"tokens": 0, "seconds": 0.0, "answers": []} for name in decoders}
    for r in range(rounds):
        order = list(decoders) if r % 2 == 0 else list(reversed(decoders))
        for name in order:
            started, answers, tokens = time.perf_counter(), [], 0
            for ids in prompts:
                text, produced = decoders[name](ids)
                answers.append(text.strip())
                tokens += produced
            stats[name]["seconds"] += time.perf_counter() - started
            stats[name]["tokens"] += tokens
            stats[name]["answers"] = answers
            print(f"round {r + 1} {name}: {tokens / (time.perf_counter() - started):.1f} tok/s", file=sys.stderr)
    return stats


def summarise(stats: dict, questions: tuple[str, ...]) -> dict:
    """tokens/s, ratios to (a) and (b), and the share of answers identical to (b) (float32 greedy)."""
    rate = {n: s["tokens"] / s["seconds"] for n, s in stats.items()}
    reference = stats["b"]["answers"]
    rows = {}
    for name, s in stats.items():
        same = [x == y for x, y in zip(s["answers"], reference, strict=True)]
        first = next((i for i, ok in enumerate(same) if not ok), None)
        rows[name] = {
            "tokens_per_s": round(rate[name], 2), "vs_a": round(rate[name] / rate["a"], 2),
            "vs_b": round(rate[name] / rate["b"], 2), "identical_to_b": f"{sum(same)}/{len(same)}",
            "first_difference": None if first is None else
            {"question": questions[first], "float32": reference[first], "this": s["answers"][first]},
        }
    return rows


# -- process start to first token -----------------------------------------------------------------------

DRIVER = r"""
import os, sys, time
marks = {"interpreter": time.time()}
from kbchat.engine.local import LocalEngine
from kbchat.memory import Embedder
from kbchat.runtime import ModelRuntime, load_model
import kbchat.engine.local as local
marks["imports"] = time.time()
_load_model, _embed = local.load_model, Embedder.load
def timed_load(*a, **k):
    out = _load_model(*a, **k); marks["model_load"] = time.time(); return out
def timed_embed(*a, **k):
    out = _embed(*a, **k); marks["embedder_load"] = time.time(); return out
local.load_model, local.Embedder.load = timed_load, timed_embed
chat = LocalEngine.open()
marks["engine_ready"] = time.time()
for piece in chat.stream(sys.argv[1], max_new_tokens=4):
    marks["first_token"] = time.time(); break
print(repr(marks))
"""


def startup(threads: int, dtypes: tuple[str, ...], repeats: int) -> dict:
    """`kbchat ask` wall time to its first printed byte, and the same path split by a driver, per dtype;
    a fresh data dir sharing the model cache, one warm run first; dtypes alternate (ABAB)."""
    with tempfile.TemporaryDirectory(prefix="kbchat-speed-") as tmp:
        home = Path(tmp)
        (home / "models").symlink_to(data_dir() / "models")
        return _startup_runs(home, threads, dtypes, repeats)


def _startup_runs(home: Path, threads: int, dtypes: tuple[str, ...], repeats: int) -> dict:
    """`startup` in the data dir `home` (its models folder is the shared cache)."""
    base = {**os.environ, "KBCHAT_HOME": str(home), "OMP_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false"}
    kbchat = str(Path(sys.executable).with_name("kbchat"))
    subprocess.run([kbchat, "ask", ASK, "--max-tokens", "4"], env=base, check=True, capture_output=True)
    out: dict = {d: {"ask_first_byte_s": [], "split": []} for d in dtypes}
    for _ in range(repeats):
        for dtype in dtypes:
            environ = {**base, "KBCHAT_DTYPE": dtype}
            out[dtype]["ask_first_byte_s"].append(_first_byte([kbchat, "ask", ASK, "--max-tokens", "4"], environ))
            started = time.time()
            done = subprocess.run([sys.executable, "-c", DRIVER, ASK], env=environ, check=True,
                                  capture_output=True, text=True)
            marks = ast.literal_eval(done.stdout.strip().splitlines()[-1])
            points = ["interpreter", "imports", "model_load", "embedder_load", "engine_ready", "first_token"]
            times = [started] + [marks[p] for p in points]
            out[dtype]["split"].append({p: round(b - a, 2) for p, a, b in zip(points, times[:-1], times[1:], strict=True)})
    return out


def _first_byte(command: list[str], environ: dict) -> float:
    started = time.time()
    with subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        proc.stdout.read(1)
        seconds = time.time() - started
        proc.communicate()
    return round(seconds, 2)


# -- the report -----------------------------------------------------------------------------------------

NAMES = {
    "a": "HF generate(do_sample=False), float32 (plain generate)",
    "b": "kbchat stream_tokens, float32 (today)",
    "c": "stream_tokens, bfloat16 weights, oneDNN per pass (KBCHAT_DTYPE=bfloat16)",
    "c0": "stream_tokens, bfloat16 weights, oneDNN for every pass (before)",
    "d": "static KV cache (HF StaticCache), float32, eager",
    "e": "static KV cache + torch.compile(model), float32",
}


def markdown(result: dict) -> str:
    env, rows = result["environment"], result["variants"]
    lines = [
        "# Decoding speed of the default model (issue #15)", "",
        f"`{result['command']}`", "",
        f"CPU: {env['cpu']} ({env['cores']} cores, torch capability {env['cpu_capability']}, avx512_bf16: "
        f"{env['avx512_bf16']}); torch {env['torch']}, transformers {env['transformers']}; "
        f"{env['threads']} torch thread(s); load average at the start {env['loadavg']}. Compare the ratios, "
        f"measured in one run with the variants interleaved ABBA over {result['rounds']} rounds.", "",
        f"{len(QUESTIONS)} chat questions, greedy, {result['new_tokens']} new tokens at most.", "",
        "| variant | tokens/s | vs (a) | vs (b) | answers identical to (b) |", "|---|---|---|---|---|",
    ]
    for key, row in rows.items():
        lines.append(f"| ({key}) {NAMES[key]} | {row['tokens_per_s']} | {row['vs_a']}× | {row['vs_b']}× | "
                     f"{row['identical_to_b']} |")
    lines += ["", "First differing answer per variant:", ""]
    for key, row in rows.items():
        if row["first_difference"]:
            d = row["first_difference"]
            lines += [f"- ({key}) *{d['question']}*", f"  - float32: {d['float32']!r}", f"  - ({key}): {d['this']!r}"]
    lines += ["", "## torch.compile", "", "```json", json.dumps(result.get("compile"), indent=1), "```"]
    if result.get("startup"):
        lines += ["", "## Process start → first token (`kbchat ask`, fresh process, model cache warm)", "",
                  "```json", json.dumps(result["startup"], indent=1), "```"]
    return "\n".join(lines) + "\n"


def environment(threads: int) -> dict:
    import transformers

    flags = Path("/proc/cpuinfo").read_text()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "avx512_bf16": "avx512_bf16" in flags, "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": threads,
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-startup", action="store_true")
    parser.add_argument("--out", default="bench/results/speed-decoding")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    home, limit = data_dir(), args.new_tokens
    f32 = load_model(None, home, dtype="float32")
    bf16 = load_model(None, home, dtype="bfloat16")
    tok = f32.tokenizer
    prompts = [chat_input_ids(tok, [{"role": "user", "content": q}], "cpu") for q in QUESTIONS]
    bf16_plain = load_model(None, home, dtype="bfloat16")
    if bf16_plain.switch is not None:
        bf16_plain.switch.remove()
    decoders: dict[str, Decoder] = {
        "a": plain_generate(f32.model, tok, limit), "b": ours(f32.model, tok, limit),
        "c": ours(bf16.model, tok, limit), "c0": ours(bf16_plain.model, tok, limit),
        "d": lambda ids: static_greedy(f32.model, f32.model, tok, ids, limit),
    }
    compile_info: dict = {"skipped": True}
    if not args.no_compile:
        fast, compile_info = compiled(copy.deepcopy(f32.model), tok, limit, prompts[0])
        if fast is not None:
            decoders["e"] = fast
    stats = throughput(decoders, prompts, args.rounds)
    result = {
        "command": "python -m bench.bench_speed " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(args.threads), "rounds": args.rounds, "new_tokens": limit,
        "variants": summarise(stats, QUESTIONS), "compile": compile_info,
        "answers": {name: s["answers"] for name, s in stats.items()},
    }
    if not args.no_startup:
        result["startup"] = startup(args.threads, ("float32", "bfloat16"), 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
