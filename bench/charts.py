"""PNG charts of a ``make bench`` result, embedded in docs/benchmarks.md.

``python -m bench`` draws them after each full run; ``python -m bench.charts [RESULT.json]``
redraws them from a saved result (default bench-results/latest.json) without measuring anything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
IMAGES = PROJECT_ROOT / "docs" / "images"
CONCURRENCY = {"single_c1": 1, "single_c4": 4, "single_c16": 16}  # the /predict workloads, by clients
LAYOUTS = {"default": "default layout (make run)", "naive": "the guide's naive set-up"}
CHARTS = {"concurrency": "bench-concurrency.png", "long_tail": "bench-long-tail.png"}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_concurrency(result: dict[str, Any], path: Path) -> None:
    """/predict pairs/s and p99 latency by concurrent clients, default layout against the naive set-up."""
    plt = pyplot()
    from matplotlib import ticker

    figure, (rates, p99s) = plt.subplots(1, 2, figsize=(10, 4))
    clients = list(CONCURRENCY.values())
    for layout, label in LAYOUTS.items():
        rows = [result[layout][workload] for workload in CONCURRENCY]
        rates.plot(clients, [row["pairs_per_second"] for row in rows], marker="o", label=label)
        p99s.plot(clients, [row["p99_ms"] for row in rows], marker="o", label=label)
    raw = result.get("engine", {}).get("raw", {})
    best = max((raw[key] for key in ("batch_1", "batch_8", "batch_32") if key in raw), default=None)
    if best is not None:
        rates.axhline(best, color="grey", linestyle="--", label="the raw engine's best (no HTTP)")
    rates.set_ylabel("pairs/s (median of the runs)")
    rates.set_ylim(bottom=0)
    p99s.set_ylabel("p99 latency (ms, log scale)")
    p99s.set_yscale("log")
    p99s.yaxis.set_major_formatter(ticker.ScalarFormatter())  # 100, 1000 rather than 10², 10³
    for axis in (rates, p99s):
        axis.set_xscale("log", base=2)
        axis.set_xticks(clients, [str(n) for n in clients])
        axis.set_xlabel("concurrent /predict clients (one pair each)")
        axis.grid(alpha=0.3, which="both")
    rates.legend(fontsize="small")
    figure.suptitle("make bench: throughput and p99 by concurrency")
    save(figure, path)


def plot_long_tail(result: dict[str, Any], path: Path) -> None:
    """Pairs/s on the long-tail workload: padded passes in input order (the guide's way), padded and
    length-sorted, and the default passes (length-sorted, padding-free where the model allows)."""
    plt = pyplot()
    tail = result["engine"]["long_tail"]
    batches = sorted({int(key.rsplit("_b", 1)[1]) for key in tail})
    figure, axis = plt.subplots(figsize=(6, 4))
    kinds = [("unsorted", "padded, input order"), ("sorted", "padded, length-sorted"), ("default", "default")]
    kinds = [(kind, label) for kind, label in kinds if f"{kind}_b{batches[0]}" in tail]
    width = 0.8 / len(kinds)
    for offset, (order, label) in enumerate(kinds):
        values = [tail[f"{order}_b{batch}"] for batch in batches]
        positions = [index + (offset - (len(kinds) - 1) / 2) * width for index in range(len(batches))]
        bars = axis.bar(positions, values, width, label=label)
        axis.bar_label(bars, fmt="%.1f", fontsize="small")
    axis.set_xticks(range(len(batches)), [f"passes of {batch} pairs" for batch in batches])
    axis.set_ylabel("pairs/s")
    axis.set_title("Long tail: 10 % premises of 200-400 words, requests of 64 pairs", fontsize="medium")
    axis.legend()
    axis.grid(alpha=0.3, axis="y")
    save(figure, path)


def save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    pyplot().close(figure)


def write_charts(result: dict[str, Any], folder: Path = IMAGES) -> dict[str, Path]:
    """Every chart of ``result`` into ``folder``: {name: path}."""
    paths = {name: folder / file for name, file in CHARTS.items()}
    plot_concurrency(result, paths["concurrency"])
    plot_long_tail(result, paths["long_tail"])
    return paths


def markdown(paths: dict[str, Path], document: Path) -> str:
    """The charts as Markdown images, linked relative to ``document``."""
    titles = {"concurrency": "pairs/s and p99 by concurrency", "long_tail": "the long-tail workload"}
    return "\n\n".join(f"![{titles[name]}]({path.relative_to(document.parent)})" for name, path in paths.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path, nargs="?", default=PROJECT_ROOT / "bench-results" / "latest.json")
    parser.add_argument("--out", type=Path, default=IMAGES, help="folder of the PNGs (default docs/images)")
    args = parser.parse_args()
    for path in write_charts(json.loads(args.result.read_text()), args.out).values():
        print(path)


if __name__ == "__main__":
    main()
