"""The benchmark's report: which targets count as met, from figures of one run."""

from __future__ import annotations

import copy

import pytest

from bench.__main__ import render, targets


def _service(pairs_per_second: float, p99_ms: float = 40.0) -> dict:
    row = {"pairs_per_second": pairs_per_second, "range": [pairs_per_second, pairs_per_second]}
    row.update({"p50_ms": 30.0, "p95_ms": 35.0, "p99_ms": p99_ms, "errors": 0})
    workloads = ("batch32_c2", "single_c1", "single_c4", "single_c16")
    return {**{name: dict(row) for name in workloads}, "pss_mib": {"total": 700.0, "processes": 5}}


RESULT = {
    "model": "m",
    "backend": "torch",
    "quantize": "none",
    "engine": {
        "raw": {
            "batch_1": 28.0,
            "batch_8": 45.0,
            "batch_32": 43.0,
            "batch_1_p50_ms": 34.0,
            "batch_1_p99_ms": 50.0,
            "worker_threads": 1,
            "worker_batch_1_p50_ms": 45.0,
            "worker_batch_1_p99_ms": 60.0,
        },
        "backends": {
            name: {
                "pairs_per_second": rate,
                "range": [rate, rate],
                "label_agreement": 1.0,
                "max_probability_difference": 0,
            }
            for name, rate in (("torch/none", 42.0), ("torch/int8", 100.0), ("onnx/none", 46.0), ("onnx/int8", 120.0))
        },
        "long_tail": {"unsorted_b8": 7.0, "sorted_b8": 19.0, "unsorted_b32": 4.0, "sorted_b32": 18.0},
    },
    "tuned": _service(50.0, p99_ms=60.0),
    "naive": _service(6.0),
    "single_pss_mib": 500.0,
}


def _met() -> dict[str, bool]:
    return {label: met for label, _, _, met in targets(RESULT)}


def test_each_target_is_judged_in_its_direction() -> None:
    met = _met()
    assert met["/predict c=16 / raw limit"] is True  # 50 / 45
    assert met["/predict c=16 / naive /predict c=16"] is True  # 50 / 6
    assert met["ONNX int8 / torch fp32 (raw, batch 32)"] is True  # 120 / 42
    assert met["torch int8 / torch fp32 (raw, batch 32)"] is False  # 100 / 42
    assert met["4 workers' PSS / one process (lower is better)"] is True  # 700 / 500
    assert met["p99 at c=1 / raw batch-1 p99 latency (lower is better)"] is True  # 60 / 50
    assert met["p99 at c=1 / raw batch-1 p50 latency (lower is better)"] is False  # 60 / 34
    assert met["p99 at c=1 / raw batch-1 p99 with a tuned worker's 1 thread (lower is better)"] is True  # 60 / 60
    assert met["long tail: sorted / unsorted, both batch 8 (the default)"] is False  # 19 / 7
    assert met["long tail: sorted / unsorted, both batch 32"] is True  # 18 / 4


@pytest.mark.parametrize(("pss", "met"), [(740.0, True), (760.0, False)])
def test_memory_is_lower_is_better(pss: float, met: bool, monkeypatch) -> None:
    monkeypatch.setitem(RESULT, "naive", copy.deepcopy(RESULT["naive"]))
    RESULT["naive"]["pss_mib"]["total"] = pss
    assert _met()["4 workers' PSS / one process (lower is better)"] is met


def test_the_table_names_every_target_and_whether_it_is_met() -> None:
    table = render(RESULT)
    for label, value, need, met in targets(RESULT):
        assert f"| {label} | {value} | {need} | {'yes' if met else 'NO'} |" in table


def test_runs_of_a_workload_give_the_median_rate_and_percentiles_of_all_latencies() -> None:
    from bench.__main__ import _summary

    runs = [
        {"pairs_per_second": 10.0, "errors": 0, "latencies_ms": [10.0] * 50},
        {"pairs_per_second": 30.0, "errors": 1, "latencies_ms": [20.0] * 49 + [500.0]},
        {"pairs_per_second": 20.0, "errors": 0, "latencies_ms": [15.0] * 50},
    ]
    summary = _summary(runs)
    assert summary["pairs_per_second"] == 20.0 and summary["range"] == [10.0, 30.0]
    assert summary["requests"] == 150 and summary["errors"] == 1
    assert summary["p50_ms"] == 15.0 and summary["p99_ms"] == 20.0  # one slow request in 150 is under p99


def test_raw_engine_figures_are_medians_over_the_rounds_measured(model_dir, monkeypatch) -> None:
    import torch
    from model_factory import SAMPLE_PAIRS

    from bench import __main__ as bench
    from nli_service.inference.types import Pair

    threads = torch.get_num_threads()
    raw = bench.RawEngine(str(model_dir), "torch", "none", [Pair(*p) for p in SAMPLE_PAIRS], seconds=0.02)
    speeds = iter([10.0, 20.0, 30.0, 0.0, 40.0, 50.0, 60.0, 0.0])  # batch 1, 8, 32, worker; twice
    measured = bench._pairs_per_second
    monkeypatch.setattr(
        bench, "_pairs_per_second", lambda *args, **kwargs: (next(speeds), measured(*args, **kwargs)[1])
    )
    raw.measure()
    raw.measure()
    summary = raw.summary()
    assert summary["rounds"] == 2
    assert (summary["batch_1"], summary["batch_8"], summary["batch_32"]) == (25.0, 35.0, 45.0)
    assert summary["batch_1_p50_ms"] <= summary["batch_1_p99_ms"]
    assert summary["worker_batch_1_p50_ms"] <= summary["worker_batch_1_p99_ms"]
    assert torch.get_num_threads() == threads, "the worker's thread count is restored after each round"
