"""The curve of a sequential `bench.bench_counterfact` run as a PNG: retention (efficacy of every edit
made so far), paraphrase and neighbourhood against the number of edits, one colour per method:

    .venv/bin/python -m bench.plot_sequential bench/results/weights-sequential-1000-alphaedit.json \
        bench/results/weights-sequential-1000-alphaedit.png

`bench_counterfact --sequential N --plot PNG` draws the same when its run ends.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

FIGURES = {"efficacy": ("retention", "o-"), "paraphrase": ("paraphrase", "^--"), "neighbourhood": ("neighbourhood", "s-")}
TARGET = 85.0  # issue #12: retention and neighbourhood after 1,000 sequential AlphaEdit edits


def points(figures: dict[str, Any]) -> list[tuple[int, dict[str, float]]]:
    """(edits made, figures) at each checkpoint of the curve and after the last edit, in order."""
    rows = [(int(n), row) for n, row in figures.get("curve", {}).items()]
    rows.append((int(figures["cases"]), figures))
    return sorted(rows, key=lambda r: r[0])


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for colour, (method, figures) in enumerate(results["methods"].items()):
        rows = points(figures)
        for key, (label, style) in FIGURES.items():
            ax.plot([n for n, _ in rows], [r[key] for _, r in rows], style, c=f"C{colour}",
                    label=f"{method}: {label}", alpha=1.0 if key != "paraphrase" else 0.6)
    ax.axhline(TARGET, ls=":", c="grey", label=f"target {TARGET:g}% (retention, neighbourhood)")
    ax.set(xlabel="sequential edits made", ylabel="% of the edits made so far",
           title=f"{Path(results.get('data', '')).name}: {results.get('mode', '')}", ylim=(50, 100))
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="a bench_counterfact --sequential --json file")
    parser.add_argument("png")
    args = parser.parse_args()
    plot(json.loads(Path(args.json).read_text()), args.png)


if __name__ == "__main__":
    main()
