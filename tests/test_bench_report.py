"""The benchmark's report: which targets count as met, from figures of one run."""

from __future__ import annotations

import copy
import json
import time

import pytest

from bench.__main__ import render, targets


def _service(pairs_per_second: float, p99_ms: float = 40.0) -> dict:
    row = {"pairs_per_second": pairs_per_second, "range": [pairs_per_second, pairs_per_second]}
    row.update({"p50_ms": 30.0, "p95_ms": 35.0, "p99_ms": p99_ms, "errors": 0})
    # 10 requests of 20 ms for pair 0 (raw: 10 ms), 90 of 40 ms for pair 1 (raw: 40 ms), and one
    # for a pair the raw engine did not time
    row.update({"latencies_ms": [20.0] * 10 + [40.0] * 90 + [900.0], "body_indices": [0] * 10 + [1] * 90 + [7]})
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
            "batch_1_ms_by_pair": [10.0, 40.0],
            "batch_1_pair_median_range_ms": [10.0, 40.0],
            "batch_1_over_own_pair_p99": 1.1,
        },
        "backends": {
            name: {
                "pairs_per_second": rate,
                "range": [rate, rate],
                "rounds": 9,
                "speed_over_fp32": round(rate / 42.0, 2),
                "speed_over_fp32_range": [round(rate / 42.0, 2)] * 2,
                "label_agreement": 1.0,
                "max_probability_difference": 0,
            }
            for name, rate in (("torch/none", 42.0), ("onnx/none", 46.0), ("onnx/int8", 120.0))
        },
        "long_tail": {
            "unsorted_b8": 7.0,
            "sorted_b8": 19.0,
            "unsorted_padding_free_b8": 15.0,
            "default_b8": 24.0,
            "unsorted_b32": 4.0,
            "sorted_b32": 18.0,
            "unsorted_padding_free_b32": 14.0,
            "default_b32": 25.0,
        },
    },
    "default": _service(50.0, p99_ms=60.0),
    "naive": _service(6.0),
    "single_pss_mib": 500.0,
    "cache": {
        "batch32_c2": {
            "on": _service(80.0)["batch32_c2"],
            "off": _service(50.0)["batch32_c2"],
            "speedup": 1.6,
            "speedup_range": [1.55, 1.65],
        },
        "single_c16": {
            "on": _service(95.0)["single_c16"],
            "off": _service(50.0)["single_c16"],
            "speedup": 1.9,
            "speedup_range": [1.85, 1.95],
        },
        "check": {
            "answers": 768,
            "from_the_cache": 500,
            "equal_share": 1.0,
            "identical_responses": "24/24",
            "against_cache_off": {"label_agreement": 1.0, "max_probability_difference": 0.0},
        },
    },
}


def _met() -> dict[str, bool]:
    return {label: met for label, _, _, met in targets(RESULT)}


def test_each_target_is_judged_in_its_direction() -> None:
    met = _met()
    assert met["/predict c=16 / raw limit"] is True  # 50 / 45
    assert met["/predict c=16 / naive /predict c=16"] is True  # 50 / 6
    assert met["ONNX int8 / torch fp32 (raw, batch 32, same rounds)"] is True  # 120 / 42
    assert "torch int8 / torch fp32 (raw, batch 32, same rounds)" not in met  # int8 is ONNX int8 only
    assert met["4 workers' PSS / one process (lower is better)"] is True  # 700 / 500
    assert met["p99 at c=1 / raw batch-1 p99 latency, same pairs (lower is better)"] is True  # 60 / 50
    assert met["long tail: sorted / unsorted, both padded, batch 8 (the naive set-up's)"] is False  # 19 / 7
    assert met["long tail: sorted / unsorted, both padded, batch 32"] is True  # 18 / 4
    assert met["long tail: default passes / the naive set-up's (padded, input order), batch 8"] is True  # 24 / 7
    assert met["long tail: default passes / padded in input order, batch 32"] is True  # 25 / 4


def test_each_cache_workload_needs_its_speed_up_and_every_cached_answer_equal(monkeypatch) -> None:
    speed = "result cache on / off, {}, half the pairs seen before (same rounds)"
    equal = "cached answers equal to the computed ones (share)"
    met = _met()
    assert (met[speed.format("batch32_c2")], met[speed.format("single_c16")], met[equal]) == (False, True, True)
    monkeypatch.setitem(RESULT, "cache", copy.deepcopy(RESULT["cache"]))
    RESULT["cache"]["check"]["equal_share"] = 0.999
    assert _met()[equal] is False


def test_the_cache_workloads_repeat_half_the_pairs_and_send_new_pairs_once() -> None:
    from bench.__main__ import CACHE_BODY_PAIRS, cache_bodies
    from nli_service.inference.types import Pair

    hot = [Pair(f"hot {i}", "h") for i in range(64)]
    fresh = [Pair(f"new {i}", "h") for i in range(160)]
    batches = cache_bodies("/batch-predict", hot, fresh)
    assert len(batches) == 10 and all(len(body["pairs"]) == CACHE_BODY_PAIRS for body in batches)
    singles = cache_bodies("/predict", hot, fresh)
    assert len(singles) == 320
    for premises in ([pair["premise"] for body in batches for pair in body["pairs"]], [s["premise"] for s in singles]):
        assert sum(premise.startswith("hot") for premise in premises) == len(premises) // 2
        assert sorted(p for p in premises if p.startswith("new")) == sorted(pair.premise for pair in fresh)


def test_loadgen_once_sends_every_body_once_whichever_thread_is_faster() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from bench.loadgen import run

    received: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["n"])
            if received[-1] % 2:
                time.sleep(0.01)  # one thread slower than the other
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run(
            f"http://127.0.0.1:{server.server_port}", "/", [{"n": n} for n in range(40)], 2, 30, 1000, once=True
        )
    finally:
        server.shutdown()
    assert sorted(received) == list(range(40)) and result["requests"] == 40


@pytest.mark.parametrize(("pss", "met"), [(740.0, True), (760.0, False)])
def test_memory_is_lower_is_better(pss: float, met: bool, monkeypatch) -> None:
    monkeypatch.setitem(RESULT, "naive", copy.deepcopy(RESULT["naive"]))
    RESULT["naive"]["pss_mib"]["total"] = pss
    assert _met()["4 workers' PSS / one process (lower is better)"] is met


def test_the_table_names_every_target_and_whether_it_is_met() -> None:
    table = render(RESULT)
    for label, value, need, met in targets(RESULT):
        assert f"| {label} | {value} | {need} | {'yes' if met else 'NO'} |" in table
    # a tenth of the requests take twice their pair's raw time, the others as long
    assert "each request over the raw batch-1 latency of its pair: p50 1.00, p99 2.00" in table


def test_runs_of_a_workload_give_the_median_rate_and_percentiles_of_all_latencies() -> None:
    from bench.__main__ import _summary

    runs = [
        {"pairs_per_second": 10.0, "errors": 0, "latencies_ms": [10.0] * 50, "body_indices": [0] * 50},
        {"pairs_per_second": 30.0, "errors": 1, "latencies_ms": [20.0] * 49 + [500.0], "body_indices": [1] * 50},
        {"pairs_per_second": 20.0, "errors": 0, "latencies_ms": [15.0] * 50, "body_indices": [2] * 50},
    ]
    summary = _summary(runs)
    assert summary["pairs_per_second"] == 20.0 and summary["range"] == [10.0, 30.0]
    assert summary["requests"] == 150 and summary["errors"] == 1
    assert summary["p50_ms"] == 15.0 and summary["p99_ms"] == 20.0  # one slow request in 150 is under p99
    assert list(zip(summary["latencies_ms"], summary["body_indices"], strict=True))[99] == (500.0, 1)


def test_each_request_is_compared_with_the_raw_latency_of_its_own_pair() -> None:
    from bench.__main__ import latency_over_raw

    workload = {"latencies_ms": [20.0, 40.0, 12.0, 900.0], "body_indices": [0, 1, 0, 5]}
    assert latency_over_raw(workload, [10.0, 40.0]) == [2.0, 1.0, 1.2]  # pair 5 was not timed raw


def test_backend_speed_is_compared_with_torch_fp32_of_the_same_round() -> None:
    from bench import __main__ as bench

    rounds = bench.BackendRounds.__new__(bench.BackendRounds)
    rounds.agreement = {name: {"label_agreement": 1.0, "max_probability_difference": 0.0} for name in bench.VARIANTS}
    # a slow spell in round 2 halves every backend: the ratios stay 3.0, 3.0, 3.0
    rounds.rates = {name: [] for name in bench.VARIANTS}
    for fp32 in (50.0, 25.0, 50.0):
        rounds.rates["torch/none"].append(fp32)
        rounds.rates["torch/none padded"].append(fp32 * 0.8)
        rounds.rates["onnx/none"].append(fp32)
        rounds.rates["onnx/int8"].append(2 * fp32 if fp32 == 25.0 else 3 * fp32)
    summary = rounds.summary()
    assert "torch/int8" not in summary
    assert summary["onnx/int8"]["speed_over_fp32"] == 3.0
    assert summary["onnx/int8"]["speed_over_fp32_range"] == [2.0, 3.0]
    assert summary["torch/none"]["rounds"] == 3
    assert summary["torch/none padded"]["speed_over_fp32"] == 0.8


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
    by_pair = summary["batch_1_ms_by_pair"]
    assert len(by_pair) == len(SAMPLE_PAIRS) and all(ms > 0 for ms in by_pair)
    assert summary["batch_1_pair_median_range_ms"] == [min(by_pair), max(by_pair)]
    assert summary["batch_1_over_own_pair_p99"] >= 1.0


def test_the_load_generator_reports_which_body_each_latency_is_for() -> None:
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from bench.loadgen import run

    class SlowForSomeBodies(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(body["delay"])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowForSomeBodies)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        bodies = [{"delay": 0.0}, {"delay": 0.5}, {"delay": 0.0}]  # far apart: a loaded machine adds tens of ms
        result = run(f"http://127.0.0.1:{server.server_port}", "/x", bodies, 1, 30, max_requests=5)
    finally:
        server.shutdown()
    assert result["body_indices"] == [0, 1, 2, 0, 1]
    for latency, index in zip(result["latencies_ms"], result["body_indices"], strict=True):
        assert (latency >= 500) == (index == 1)
