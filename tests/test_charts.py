"""The charts of ``make bench`` and ``make eval`` (issue 16 §4), drawn from made-up figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bench import charts as bench_charts
from training import charts as eval_charts
from training.evaluate import confusion_matrix, expected_calibration_error, reliability
from training.nli_data import Example


def _layout(rates: list[float], p99s: list[float]) -> dict:
    rows = zip(bench_charts.CONCURRENCY, rates, p99s, strict=True)
    return {name: {"pairs_per_second": rate, "p99_ms": p99} for name, rate, p99 in rows}


BENCH_RESULT = {
    "engine": {
        "raw": {"batch_1": 28.0, "batch_8": 45.0, "batch_32": 43.0},
        "long_tail": {"unsorted_b8": 11.1, "sorted_b8": 39.7, "unsorted_b32": 5.9, "sorted_b32": 40.9},
    },
    "default": _layout([30.0, 53.0, 66.0], [46.0, 120.0, 377.0]),
    "naive": _layout([28.0, 8.0, 11.0], [50.0, 1154.0, 2571.0]),
}


def _is_png(path: Path, size: tuple[int, int]) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and image.size == size


def test_bench_writes_both_charts_and_links_them_from_the_docs(tmp_path: Path) -> None:
    paths = bench_charts.write_charts(BENCH_RESULT, tmp_path / "images")
    assert set(paths) == {"concurrency", "long_tail"}
    assert _is_png(paths["concurrency"], (900, 360)) and _is_png(paths["long_tail"], (540, 360))
    text = bench_charts.markdown(paths, tmp_path / "benchmarks.md")
    assert "](images/bench-concurrency.png)" in text and "](images/bench-long-tail.png)" in text


def test_the_concurrency_chart_plots_each_layouts_figures_and_the_raw_engines_best(monkeypatch) -> None:
    drawn = {}
    plt = bench_charts.pyplot()
    monkeypatch.setattr(bench_charts, "save", lambda figure, path: drawn.setdefault("figure", figure))
    bench_charts.plot_concurrency(BENCH_RESULT, Path("unused.png"))
    rates, p99s = drawn["figure"].axes
    lines = {line.get_label(): line for line in rates.get_lines()}
    assert list(lines["default layout (make run)"].get_ydata()) == [30.0, 53.0, 66.0]
    assert list(lines["the guide's naive set-up"].get_ydata()) == [28.0, 8.0, 11.0]
    assert list(lines["the raw engine's best (no HTTP)"].get_ydata()) == [45.0, 45.0]
    assert [list(line.get_ydata()) for line in p99s.get_lines()] == [[46.0, 120.0, 377.0], [50.0, 1154.0, 2571.0]]
    plt.close(drawn["figure"])


def _scores(entailment: float, neutral: float, contradiction: float) -> dict[str, float]:
    return {"entailment": entailment, "neutral": neutral, "contradiction": contradiction}


EXAMPLES = [Example("p", "h", label) for label in ("entailment", "entailment", "neutral", "contradiction")]
SCORES = [_scores(0.9, 0.05, 0.05), _scores(0.1, 0.8, 0.1), _scores(0.1, 0.7, 0.2), _scores(0.3, 0.1, 0.6)]


def test_eval_counts_a_confusion_matrix_and_reliability_bins() -> None:
    confusion = confusion_matrix(EXAMPLES, SCORES)
    labels = confusion["labels"]
    counts = {(labels[i], labels[j]): n for i, row in enumerate(confusion["counts"]) for j, n in enumerate(row) if n}
    expected = {("entailment", "entailment"), ("entailment", "neutral"), ("neutral", "neutral")}
    assert counts == dict.fromkeys(expected | {("contradiction", "contradiction")}, 1)
    bins = reliability(EXAMPLES, SCORES, bins=10)
    used = {round(b["low"], 1): (b["pairs"], round(b["accuracy"], 2)) for b in bins if b["pairs"]}
    assert used == {0.9: (1, 1.0), 0.8: (1, 0.0), 0.7: (1, 1.0), 0.6: (1, 1.0)}
    gaps = sum(b["pairs"] / 4 * abs(b["confidence"] - b["accuracy"]) for b in bins)
    assert expected_calibration_error(EXAMPLES, SCORES, bins=10) == pytest.approx(gaps)
    two_way = confusion_matrix([Example("p", "h", "not_entailment")], [_scores(0.2, 0.7, 0.1)])
    assert two_way == {"labels": ["entailment", "not_entailment"], "counts": [[0, 0], [0, 1]]}


def test_eval_writes_one_png_per_set_with_the_counts_in_its_cells(tmp_path: Path) -> None:
    charts = {"confusion": confusion_matrix(EXAMPLES, SCORES), "reliability": reliability(EXAMPLES, SCORES)}
    paths = eval_charts.write_charts({"snli_test": charts, "rte_val": charts}, tmp_path)
    assert sorted(path.name for path in paths.values()) == ["eval-rte_val.png", "eval-snli_test.png"]
    assert all(_is_png(path, (900, 396)) for path in paths.values())

    plt = bench_charts.pyplot()
    figure, axis = plt.subplots()
    eval_charts.plot_confusion(axis, charts["confusion"])
    assert sorted(text.get_text() for text in axis.texts if not text.get_text().startswith("0\n")) == [
        "1\n100%",
        "1\n100%",
        "1\n50%",
        "1\n50%",
    ]
    plt.close(figure)
