"""``truncated`` on every result, its counter, and ``POST /verify`` (claims against a whole document).

In-process apps on the tiny model with a low ``NLI_MAX_LENGTH``, so that short documents
already need several windows and short pairs are already truncated.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from prometheus_client import REGISTRY
from serving import service_env
from transformers import AutoTokenizer

from nli_service.config import Settings
from nli_service.inference.documents import (
    DEFAULT_WINDOW_SENTENCES,
    RELATED,
    Windowing,
    deciding_window,
    sentence_spans,
)
from nli_service.schemas import VerifyResponse

MAX_LENGTH = 32
SENTENCES = [
    "A man is playing a guitar.",
    "Two dogs are running in the park.",
    "The child is happy!",
    "A woman is eating food inside a house?",
    "Three people are sitting on the street.",
    "A cat is sleeping.",
    "The red car is driving.",
    "A person plays music outside.",
]
DOCUMENT = " ".join(SENTENCES)
CLAIMS = ["A person plays music.", "The dogs are sleeping."]
LONG_PREMISE = " ".join(SENTENCES)  # far over 32 tokens


@pytest.fixture
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture
def verify_client(make_app):
    """The default windows (each sentence, and each with the next), 32 tokens per pair."""
    app = make_app(NLI_MAX_LENGTH=MAX_LENGTH, NLI_MAX_PAIRS=32)
    with app.test_client() as client:
        yield client


def truncated_count() -> float:
    return REGISTRY.get_sample_value("nli_truncated_pairs_total") or 0.0


# -- sentences and windows --------------------------------------------------------------


def test_sentences_split_at_latin_chinese_and_japanese_ends_and_offsets_slice_the_text() -> None:
    text = (
        "一只狗在公园里跑。两个孩子在踢足球！天气好吗？ 猫が寝ている。犬が走る！Prices rose 3.5% today. Why?\nNew line"
    )
    spans = sentence_spans(text)
    assert [span.text for span in spans] == [
        "一只狗在公园里跑。",
        "两个孩子在踢足球！",
        "天气好吗？",
        "猫が寝ている。",
        "犬が走る！",
        "Prices rose 3.5% today.",
        "Why?",
        "New line",
    ]
    assert all(text[span.start : span.end] == span.text for span in spans)


def test_windows_are_every_run_of_up_to_n_adjacent_sentences_that_fits_max_length(tokenizer) -> None:
    sentences = sentence_spans(DOCUMENT)
    runs = {(s.start, s.end): [s] for s in sentences}  # every sentence alone, and...
    for size in (2, 3):
        for first in range(len(sentences) - size + 1):
            run = sentences[first : first + size]
            runs[(run[0].start, run[-1].end)] = run
    windows = Windowing(tokenizer, MAX_LENGTH, window_sentences=3).windows(DOCUMENT, CLAIMS)
    assert len(windows) == len(set(windows)) and {(w.start, w.end) for w in windows} <= set(runs)
    fitting = [
        span
        for span, run in runs.items()
        if all(
            len(tokenizer(DOCUMENT[span[0] : span[1]], c, truncation=False)["input_ids"]) <= MAX_LENGTH for c in CLAIMS
        )
    ]
    assert {(w.start, w.end) for w in windows} == set(fitting)  # ...every run that fits, no other
    assert any(len(runs[(w.start, w.end)]) == 2 for w in windows)  # at 32 tokens, neighbours fit together
    assert [w.start for w in windows] == sorted(w.start for w in windows)  # in document order
    for window in windows:
        assert DOCUMENT[window.start : window.end] == window.text
    default = Settings.from_env({}).verify_window_sentences
    assert default == DEFAULT_WINDOW_SENTENCES == Windowing(tokenizer, MAX_LENGTH).window_sentences == 2  # overlapping


def test_one_sentence_windows_do_not_overlap_and_a_too_long_sentence_is_cut_to_fit(tokenizer) -> None:
    long_sentence = "a man and a woman and a child and a dog and a cat " * 6 + "are outside."
    document = f"The dog runs. {long_sentence} The cat sleeps."
    windows = Windowing(tokenizer, MAX_LENGTH, window_sentences=1).windows(document, ["A dog is outside."])
    assert windows[0].text == "The dog runs." and windows[-1].text == "The cat sleeps."
    pieces = windows[1:-1]
    assert len(pieces) > 1 and " ".join(piece.text for piece in pieces) == long_sentence
    for window in windows:
        assert document[window.start : window.end] == window.text
        assert len(tokenizer(window.text, "A dog is outside.", truncation=False)["input_ids"]) <= MAX_LENGTH


def test_relatedness_points_at_the_sentence_sharing_the_claims_distinctive_words(tokenizer) -> None:
    windowing = Windowing(tokenizer, MAX_LENGTH)
    windows = windowing.windows(DOCUMENT, CLAIMS)
    [dogs] = windowing.relatedness(windows, ["The dogs are sleeping."])
    assert [w.text for w, value in zip(windows, dogs, strict=True) if value == 1.0] == [SENTENCES[1]]
    # A window is as related as its least related sentence: the dogs joined to the guitar player are not.
    joined = next(n for n, w in enumerate(windows) if w.text == f"{SENTENCES[0]} {SENTENCES[1]}")
    guitar = next(n for n, w in enumerate(windows) if w.text == SENTENCES[0])
    assert dogs[joined] == dogs[guitar] < RELATED


def test_deciding_window_is_summac_zs_among_the_windows_the_claim_is_about() -> None:
    # An SNLI model calls unrelated sentences contradictions; only related windows are read.
    assert deciding_window([0.1, 1.0, 0.2], [0.0, 0.02, 0.0], [0.99, 0.05, 0.98]) == 1
    assert deciding_window([0.9, 1.0], [0.97, 0.01], [0.01, 0.95]) == 0  # entailed elsewhere: supported
    # Among related windows the highest entailment - contradiction wins, not the most related one.
    assert deciding_window([1.0, RELATED, RELATED - 0.01], [0.5, 0.6, 0.99], [0.0, 0.0, 0.0]) == 1
    assert deciding_window([0.0, 0.0], [0.1, 0.7], [0.9, 0.1]) == 1  # no related window: all are read
    assert deciding_window([1.0, 1.0], [0.2, 0.2], [0.1, 0.1]) == 0  # a tie: the earlier window


# -- truncated on /predict, /batch-predict, /zero-shot ----------------------------------


def test_predict_and_batch_predict_say_whether_the_pair_was_truncated(make_app) -> None:
    with make_app(NLI_MAX_LENGTH=MAX_LENGTH).test_client() as client:
        short = client.post("/predict", json={"premise": "A dog runs.", "hypothesis": "An animal moves."})
        long = client.post("/predict", json={"premise": LONG_PREMISE, "hypothesis": "An animal moves."})
        batch = client.post(
            "/batch-predict",
            json={
                "pairs": [
                    {"premise": "A dog runs.", "hypothesis": "A cat."},
                    {"premise": LONG_PREMISE, "hypothesis": "A cat."},
                ]
            },
        )
        zero_shot = client.post(
            "/zero-shot", json={"texts": ["A dog runs.", LONG_PREMISE], "labels": ["pets", "music"]}
        )
    assert short.get_json()["truncated"] is False and long.get_json()["truncated"] is True
    assert [r["truncated"] for r in batch.get_json()["results"]] == [False, True]
    assert [r["truncated"] for r in zero_shot.get_json()["results"]] == [False, True]


def test_truncated_survives_a_cache_hit_byte_identically_and_is_counted_each_time(make_app) -> None:
    body = {"premise": LONG_PREMISE, "hypothesis": "A person plays music."}
    with make_app(NLI_MAX_LENGTH=MAX_LENGTH, NLI_CACHE_SIZE=100).test_client() as client:
        before = truncated_count()
        computed = client.post("/predict", json=body)
        counted_once = truncated_count()
        cached = client.post("/predict", json=body)
        assert REGISTRY.get_sample_value("nli_cache_hits_total", {"store": "memory"})
    assert computed.get_json()["truncated"] is True and cached.data == computed.data
    assert counted_once == before + 1 and truncated_count() == before + 2


def test_a_pair_that_fits_is_not_counted(make_app) -> None:
    with make_app(NLI_MAX_LENGTH=MAX_LENGTH).test_client() as client:
        before = truncated_count()
        client.post("/predict", json={"premise": "A cat sleeps.", "hypothesis": "A cat rests."})
    assert truncated_count() == before


# -- POST /verify -----------------------------------------------------------------------


def test_verify_answers_each_claim_with_the_deciding_windows_result_and_its_span(verify_client) -> None:
    response = verify_client.post("/verify", json={"document": DOCUMENT, "claims": CLAIMS})
    assert response.status_code == 200, response.get_json()
    body = VerifyResponse.model_validate(response.get_json())
    assert body.windows > 2 and len(body.results) == len(CLAIMS)
    for claim, result in zip(CLAIMS, body.results, strict=True):
        evidence = result.evidence
        assert DOCUMENT[evidence.start : evidence.end] == evidence.text
        # The claim's result is the engine's result for (evidence window, claim), whatever the batch.
        alone = verify_client.post("/predict", json={"premise": evidence.text, "hypothesis": claim}).get_json()
        assert alone["label"] == result.label and alone["truncated"] is result.truncated is False
        assert alone["scores"] == pytest.approx(result.scores, abs=1e-5)


def test_verify_reads_chinese_documents_in_sentence_windows(verify_client) -> None:
    document = "一只狗在公园里跑。两个孩子在踢足球！天气很好。" * 3
    response = verify_client.post("/verify", json={"document": document, "claims": ["狗在跑。"]})
    assert response.status_code == 200
    [result] = response.get_json()["results"]
    assert document[result["evidence"]["start"] : result["evidence"]["end"]] == result["evidence"]["text"]
    assert result["evidence"]["text"].endswith(("。", "！"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"claims": ["x"]}, "document is required"),
        ({"document": 3, "claims": ["x"]}, "document must be a string, got number"),
        ({"document": "  ", "claims": ["x"]}, "document must not be empty or only whitespace"),
        ({"document": "A dog."}, "claims is required"),
        ({"document": "A dog.", "claims": "x"}, "claims must be an array, got string"),
        ({"document": "A dog.", "claims": []}, "claims must hold at least one claim"),
        ({"document": "A dog.", "claims": ["ok", ""]}, "claims[1] must not be empty or only whitespace"),
        ({"document": "A dog.", "claims": ["ok", None]}, "claims[1] must be a string, got null"),
    ],
)
def test_bad_verify_bodies_are_400_naming_the_field(verify_client, body: dict, message: str) -> None:
    response = verify_client.post("/verify", json=body)
    assert response.status_code == 400 and response.get_json()["error"] == message


def test_verify_limits_are_413(make_app) -> None:
    app = make_app(NLI_MAX_LENGTH=MAX_LENGTH, NLI_MAX_PAIRS=4, NLI_MAX_EXPANDED_CHARS=2000)
    with app.test_client() as client:
        claims = client.post("/verify", json={"document": "A dog.", "claims": ["x"] * 5})
        windows = client.post("/verify", json={"document": DOCUMENT, "claims": ["A dog.", "A cat."]})
        chars = client.post("/verify", json={"document": "A dog runs. " * 100, "claims": ["x", "y"]})
        fits = client.post("/verify", json={"document": "A dog runs. A cat sleeps.", "claims": ["A dog."]})
    assert claims.status_code == 413 and "5 claims is more than the limit of 4" in claims.get_json()["error"]
    assert windows.status_code == 413 and "15 windows x 2 claims is 30 pairs" in windows.get_json()["error"]
    assert chars.status_code == 413 and "NLI_MAX_EXPANDED_CHARS" in chars.get_json()["error"]
    assert fits.status_code == 200 and fits.get_json()["windows"] == 3  # each sentence, and both together


def test_verify_is_in_the_openapi_document_with_an_example_whose_offsets_slice_it(client) -> None:
    document = client.get("/openapi.json").get_json()
    operation = document["paths"]["/verify"]["post"]
    assert operation["operationId"] == "verify" and "413" in operation["responses"]
    [request] = operation["requestBody"]["content"]["application/json"]["examples"].values()
    [answer] = operation["responses"]["200"]["content"]["application/json"]["examples"].values()
    text = request["value"]["document"]
    for result in answer["value"]["results"]:
        assert text[result["evidence"]["start"] : result["evidence"]["end"]] == result["evidence"]["text"]


# -- the client and the CLI -------------------------------------------------------------


@pytest.mark.slow
def test_client_verify_and_the_cli_against_the_real_service_and_locally(tiny_server, model_dir, tmp_path) -> None:
    from nli_service.client import NLIClient

    text = " ".join(SENTENCES[:2])  # 3 windows (each sentence, and both): the server takes 4 pairs per request
    with NLIClient(tiny_server.url) as nli:
        verdicts = nli.verify(text, CLAIMS[:1])
        [prediction] = nli.batch_predict([(verdicts[0].evidence.text, CLAIMS[0])])
    assert text[verdicts[0].evidence.start : verdicts[0].evidence.end] == verdicts[0].evidence.text
    assert prediction.label == verdicts[0].label and prediction.truncated is verdicts[0].truncated
    document = tmp_path / "document.txt"
    document.write_text(text, encoding="utf-8")
    command = [sys.executable, "-m", "nli_service.cli", "verify", str(document), "--claim", CLAIMS[0]]
    remote = subprocess.run([*command, "--url", tiny_server.url], capture_output=True, text=True, timeout=60)
    local = subprocess.run(  # without --url: the engine in a child process, same settings as the server
        command, capture_output=True, text=True, timeout=120, env=service_env(NLI_MODEL=model_dir)
    )
    for done in (remote, local):
        assert done.returncode == 0, done.stderr
        [printed] = json.loads(done.stdout)
        assert printed["label"] == verdicts[0].label and printed["evidence"]["text"] == verdicts[0].evidence.text
