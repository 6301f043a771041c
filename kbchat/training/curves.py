"""Training curves of `kbchat train-editor` runs: the per-step logs (`<editor>.log.jsonl`) as JSON and a
plot (edit loss, locality KL, validation edit success and locality answers kept against the step).

    python -m kbchat.training.curves --run instructedit=LOG --run mend=LOG \
        --json-dir bench/results --png bench/results/editor-training.png [--about KEY=VALUE ...]

Each run becomes `bench/results/editor-training-<name>.json` (its steps, validations, wall time); the
plot shows all runs side by side. Needs matplotlib (the `dev` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_log(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by_step: dict[int, dict] = {}
    offset, last = 0.0, 0.0
    for row in rows:  # a resumed run may repeat steps after its last checkpoint: keep the later rows
        if row["seconds"] < last:  # a resumed process counts its seconds from 0: continue the clock
            offset += last
        last = row["seconds"]
        by_step[row["step"]] = {**row, "seconds": round(row["seconds"] + offset, 2)}
    return [by_step[k] for k in sorted(by_step)]


def read_history(path: Path) -> list[dict]:
    """Validation rows from `train-editor --json` output, or from a training-state file's header."""
    if path.suffix == ".safetensors":
        from methods.mend.checkpoint import read_header

        return json.loads(read_header(path)["progress"])["history"]
    return json.loads(path.read_text())["history"]


def summarise(name: str, rows: list[dict], about: dict | None = None, history: list[dict] = ()) -> dict:
    """`history`: the run's validation rows as `train()` keeps them (`train-editor --json`, or the state
    file's): they add step 0 (before any training) and the locality answers kept (`val_kept`)."""
    vals = {r["step"]: dict(r) for r in rows if "val_success" in r}
    for h in history:
        if h["step"] in vals or h["step"] == 0:
            row = vals.setdefault(h["step"], {"step": h["step"], "val_edit_loss": h["edit"], "val_loc_loss": h["loc"],
                                              "val_success": h["success"], "seconds": 0.0})
            if "kept" in h:
                row["val_kept"] = h["kept"]
    ordered = [vals[k] for k in sorted(vals)]
    chosen = rows[-1].get("best_step") if rows else None  # train() kept this one (its own objective)
    best = next((r for r in ordered if r["step"] == chosen), ordered[-1] if ordered else None)
    keys = ("step", "val_edit_loss", "val_loc_loss", "val_success", "val_kept", "seconds")
    return {
        "run": name,
        "about": about or {},
        "steps": rows[-1]["step"] if rows else 0,
        "wall_seconds": rows[-1]["seconds"] if rows else 0.0,
        "best": best,
        "validations": [{k: r[k] for k in keys if k in r} for r in ordered],
        "train": [{k: r[k] for k in ("step", "edit_loss", "loc_loss", "seconds")} for r in rows],
    }


def smooth(values: list[float], window: int = 10) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot(runs: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for run in runs:
        steps = [r["step"] for r in run["train"]]
        line = axes[0].plot(steps, smooth([r["edit_loss"] for r in run["train"]]), label=f"{run['run']} (train, 10-step mean)")
        colour = line[0].get_color()
        vsteps = [v["step"] for v in run["validations"]]
        axes[0].plot(vsteps, [v["val_edit_loss"] for v in run["validations"]], "o--", color=colour,
                     label=f"{run['run']} (validation)")
        axes[1].plot(steps, smooth([r["loc_loss"] for r in run["train"]]), color=colour, label=f"{run['run']} (train)")
        axes[1].plot(vsteps, [v["val_loc_loss"] for v in run["validations"]], "o--", color=colour,
                     label=f"{run['run']} (validation)")
        axes[2].plot(vsteps, [v["val_success"] for v in run["validations"]], "o-", color=colour,
                     label=f"{run['run']} edit success")
        kept = [(v["step"], v["val_kept"]) for v in run["validations"] if "val_kept" in v]
        if kept:
            axes[2].plot(*zip(*kept, strict=True), "s:", color=colour, label=f"{run['run']} locality answers kept")
    axes[0].set(title="edit loss: target NLL on the paraphrase after the edit", xlabel="step", ylabel="nats")
    axes[1].set(title="locality loss: KL(original || edited)", xlabel="step", ylabel="nats per token")
    axes[2].set(title="held out: edit success; locality answers kept", xlabel="step", ylabel="share", ylim=(-0.02, 1.02))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Editor training for SmolLM2-135M-Instruct (CounterFact + zsRE + chat training splits)", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=LOG (a .log.jsonl file)")
    parser.add_argument("--about", action="append", default=[], help="NAME:KEY=VALUE, recorded in NAME's JSON")
    parser.add_argument("--history", action="append", default=[],
                        help="NAME=FILE: the run's `train-editor --json` output or its .state.safetensors "
                             "(adds the step-0 validation and the locality answers kept)")
    parser.add_argument("--json-dir", type=Path, required=True)
    parser.add_argument("--png", type=Path, required=True)
    args = parser.parse_args(argv)
    abouts: dict[str, dict] = {}
    for item in args.about:
        name, rest = item.split(":", 1)
        key, value = rest.split("=", 1)
        abouts.setdefault(name, {})[key] = value
    runs = []
    for item in args.run:
        name, log = item.split("=", 1)
        history = []
        for item2 in args.history:
            hname, hfile = item2.split("=", 1)
            if hname == name:
                history += read_history(Path(hfile))
        run = summarise(name, read_log(Path(log)), abouts.get(name), history)
        runs.append(run)
        out = args.json_dir / f"editor-training-{name}.json"
        out.write_text(json.dumps(run, indent=1) + "\n")
        print(out)
    plot(runs, args.png)
    print(args.png)


if __name__ == "__main__":
    main()
