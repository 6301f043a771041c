"""Soak: kill -9 kbchat at random moments of its work, then check the next start.

Each round runs one operation as its own process (`kbchat edit` memory or weight, `revert`, `commit`,
a first start that dequantises the model, a first weight edit that computes statistics) and SIGKILLs
it after a random delay drawn from that operation's measured duration. After every kill:
`kbchat verify` must pass, the next start must work, and every edit a finished command reported
must still be in the ledger with the status it reported. Seeded, so a failing round can be replayed.

    .venv/bin/python -m bench.soak --rounds 60 --seed 0 --json bench/results/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FACTS = [
    ("Eiffel Tower", "The Eiffel Tower is located in", ["Rome", "Berlin", "Madrid"]),
    ("Microsoft", "Microsoft was founded by", ["Elon Musk", "Ada Lovelace"]),
    ("Toyota", "Toyota is headquartered in", ["Sweden", "Chile"]),
    ("Big Ben", "Big Ben is located in", ["Madrid", "Oslo"]),
    ("Pablo Picasso", "Pablo Picasso was born in", ["Canada", "Peru"]),
]
OPERATIONS = ("memory-edit", "weight-edit", "revert", "commit", "first-start", "statistics")


def kbchat(args: list[str], env: dict[str, str], timeout: float | None = None, kill_after: float | None = None):
    """Run `kbchat ARGS`; with `kill_after`, SIGKILL it then. Returns (exit code or -9, stdout, seconds)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kbchat.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
    return proc.returncode, out, time.perf_counter() - started


def command(operation: str, rng: random.Random, active: list[dict]) -> list[str]:
    subject, prompt, targets = rng.choice(FACTS)
    text = f"{subject} → {prompt} {rng.choice(targets)}"
    if operation in ("memory-edit", "first-start"):
        return ["edit", text, "--no-audit", "--json"]
    if operation in ("weight-edit", "statistics"):
        return ["edit", text, "--method", "rome", "--no-audit", "--json"]
    if operation == "revert" and active:
        return ["revert", str(rng.choice(active)["id"]), "--json"]
    return ["commit", "--json"] if operation == "commit" else ["edits", "--json"]


def fresh_home(base: Path, shared: Path, operation: str) -> Path:
    """The data dir for a round: the shared one, or one missing the model cache or the statistics."""
    if operation not in ("first-start", "statistics"):
        return shared
    home = Path(tempfile.mkdtemp(dir=base))
    if operation == "statistics" and (shared / "models").exists():
        os.symlink(shared / "models", home / "models")
    return home


def check(env: dict[str, str], reported: dict[int, str]) -> list[str]:
    """What is wrong after a kill: verify's problems, and reported edits missing or changed."""
    code, out, _ = kbchat(["verify", "--json"], env, timeout=600)
    problems = [] if code == 0 else [f"verify exited {code}: {out.strip()[:300]}"]
    code, out, _ = kbchat(["edits", "--json"], env, timeout=600)
    if code != 0:
        return [*problems, f"the next start failed (exit {code})"]
    statuses = {e["id"]: e["status"] for e in json.loads(out)}
    for edit_id, status in reported.items():
        if edit_id not in statuses:
            problems.append(f"edit #{edit_id} reported {status} is missing")
    return problems


def warm_up(env: dict[str, str], reported: dict[int, str]) -> None:
    """Dequantise the model and compute statistics in the shared data dir once, uninterrupted, so that
    the durations measured for edits, reverts and commits are those of their own work."""
    code, out, _ = kbchat(["edit", f"{FACTS[0][0]} → {FACTS[0][1]} {FACTS[0][2][0]}", "--method", "rome",
                           "--no-audit", "--json"], env, timeout=1800)
    if code != 0:
        sys.exit(f"warm-up edit failed (exit {code})")
    track(out, reported)


def track(out: str, reported: dict[int, str]) -> None:
    """Remember what a finished command reported (one edit or a list of them)."""
    data = json.loads(out)
    for record in data if isinstance(data, list) else [data]:
        if isinstance(record, dict) and "id" in record:
            reported[record["id"]] = record["status"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", help="a data dir with the model cache and statistics (default: a new one)")
    parser.add_argument("--model", help="--model for kbchat (default: the default model)")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="kbchat-soak-"))
    shared = Path(args.home) if args.home else base / "home"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KBCHAT_HOME": str(shared), "KBCHAT_DB": f"sqlite:///{base}/ledger.db",
           "KBCHAT_CONFIG": str(base / "absent.toml"), "TOKENIZERS_PARALLELISM": "false"}
    if args.model:
        env["KBCHAT_MODEL"] = args.model
    durations: dict[str, float] = {}
    reported: dict[int, str] = {}
    rounds = []
    warm_up(env, reported)
    for i in range(args.rounds):
        operation = OPERATIONS[i % len(OPERATIONS)] if i < len(OPERATIONS) else rng.choice(OPERATIONS)
        home = fresh_home(base, shared, operation)
        round_env = {**env, "KBCHAT_HOME": str(home)}
        active = [{"id": k} for k, v in reported.items() if v == "active"]
        argv = command(operation, rng, active)
        if operation not in durations:  # measure once, uninterrupted: the kills then land inside it
            code, out, seconds = kbchat(argv, round_env, timeout=1800)
            durations[operation] = seconds
            if code == 0:
                track(out, reported)
            argv = command(operation, rng, [{"id": k} for k, v in reported.items() if v == "active"])
            home = fresh_home(base, shared, operation)
            round_env = {**env, "KBCHAT_HOME": str(home)}
        delay = rng.uniform(0.0, durations[operation])
        code, out, seconds = kbchat(argv, round_env, kill_after=delay)
        if code == 0:
            track(out, reported)
            # a finished run that was quicker narrows the window, so later kills land inside the work
            durations[operation] = min(durations[operation], seconds)
        problems = check(round_env, reported)
        rounds.append({"round": i, "operation": operation, "argv": argv, "kill_after": round(delay, 2),
                       "killed": code == -signal.SIGKILL, "exit": code, "problems": problems})
        print(f"{i:3d} {operation:12s} kill after {delay:6.2f} s: {'killed' if code == -9 else f'exit {code}'}"
              f"{'  PROBLEMS: ' + '; '.join(problems) if problems else ''}", flush=True)
        if home != shared:
            shutil.rmtree(home, ignore_errors=True)
        if args.json:  # after every round: a stopped soak keeps what it showed
            Path(args.json).write_text(json.dumps(summary(args, rounds, reported, durations), indent=1))
    failed = [r for r in rounds if r["problems"]]
    print(f"{len(rounds)} rounds, {sum(r['killed'] for r in rounds)} killed mid-operation, {len(failed)} with problems")
    sys.exit(1 if failed else 0)


def summary(args: argparse.Namespace, rounds: list[dict], reported: dict[int, str],
            durations: dict[str, float]) -> dict:
    return {"command": " ".join(["python -m bench.soak", *sys.argv[1:]]), "seed": args.seed,
            "rounds": len(rounds), "rounds_asked": args.rounds, "killed": sum(r["killed"] for r in rounds),
            "rounds_with_problems": sum(bool(r["problems"]) for r in rounds),
            "edits_reported": len(reported), "durations": durations, "per_round": rounds}


if __name__ == "__main__":
    main()
