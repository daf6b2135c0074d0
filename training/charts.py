"""PNG charts of ``make eval``: for each evaluation set, its confusion matrix and reliability diagram.

Drawn by ``python -m training.evaluate`` from the counts it keeps per set (``confusion_matrix``,
``reliability``); the model card embeds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.charts import pyplot, save

TITLE = "confusion matrix and reliability diagram"


def plot_confusion(axis: Any, confusion: dict[str, list]) -> None:
    """Rows: the gold label; columns: the predicted one; each cell its count and its share of the row."""
    labels, counts = confusion["labels"], confusion["counts"]
    shares = [[count / max(sum(row), 1) for count in row] for row in counts]
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            colour = "white" if shares[i][j] > 0.5 else "black"
            axis.text(j, i, f"{count}\n{shares[i][j]:.0%}", ha="center", va="center", color=colour, fontsize="small")
    axis.set_xticks(range(len(labels)), labels, rotation=20)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("gold")
    axis.set_title("confusion matrix (shares of each gold row)", fontsize="medium")


def plot_reliability(axis: Any, bins: list[dict[str, float]]) -> None:
    """Accuracy against confidence per bin; a calibrated model's bars reach the diagonal."""
    used = [b for b in bins if b["pairs"]]
    total = sum(b["pairs"] for b in used)
    error = sum(b["pairs"] / total * abs(b["confidence"] - b["accuracy"]) for b in used) if total else 0.0
    width = bins[0]["high"] - bins[0]["low"] if bins else 0.1
    lows, accuracies = [b["low"] for b in used], [b["accuracy"] for b in used]
    axis.bar(lows, accuracies, width, align="edge", edgecolor="white", label="accuracy of the bin")
    confidences = [b["confidence"] for b in used]
    axis.plot(confidences, accuracies, "o", color="tab:red", markersize=3, label="at its mean confidence")
    axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("confidence (the predicted label's probability)")
    axis.set_ylabel("accuracy")
    axis.set_title(f"reliability diagram (ECE {error:.3f}, {len(bins)} bins)", fontsize="medium")
    axis.legend(loc="upper left", fontsize="small")


def plot_set(name: str, charts: dict[str, Any], path: Path) -> None:
    """One PNG: ``name``'s confusion matrix beside its reliability diagram."""
    plt = pyplot()
    figure, (matrix, diagram) = plt.subplots(1, 2, figsize=(10, 4.4))
    plot_confusion(matrix, charts["confusion"])
    plot_reliability(diagram, charts["reliability"])
    counts = charts["confusion"]["counts"]
    total = sum(map(sum, counts))
    accuracy = sum(counts[i][i] for i in range(len(counts))) / max(total, 1)
    figure.suptitle(f"make eval: {name}, {total} pairs, accuracy {accuracy:.2%}")
    save(figure, path)


def write_charts(charts_by_set: dict[str, dict[str, Any]], folder: Path) -> dict[str, Path]:
    """One PNG per set into ``folder`` (``eval-<set>.png``): {set: path}."""
    paths = {name: folder / f"eval-{name}.png" for name in charts_by_set}
    for name, charts in charts_by_set.items():
        plot_set(name, charts, paths[name])
    return paths
