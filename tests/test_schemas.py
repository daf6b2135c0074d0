"""The request schemas on their own: messages that name the field, strict types, limits, zero-shot templates."""

from __future__ import annotations

import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nli_service.inference.types import Pair, zero_shot_pairs
from nli_service.schemas import (
    BatchPredictRequest,
    Limits,
    PredictRequest,
    RequestError,
    ZeroShotRequest,
    template_parts,
    validate,
)

PAIR = {"premise": "A dog runs.", "hypothesis": "An animal moves."}
LIMITS = Limits(max_pairs=4, max_expanded_chars=10_000)


def error_of(model, body, limits: Limits = LIMITS) -> RequestError:
    with pytest.raises(RequestError) as caught:
        validate(model, body, limits)
    return caught.value


@pytest.mark.parametrize(
    ("model", "body", "message"),
    [
        (PredictRequest, {"hypothesis": "x"}, "premise is required"),
        (PredictRequest, {"premise": 3, "hypothesis": "x"}, "premise must be a string, got number"),
        (PredictRequest, {"premise": "x", "hypothesis": True}, "hypothesis must be a string, got boolean"),
        (PredictRequest, {"premise": "x", "hypothesis": ["y"]}, "hypothesis must be a string, got array"),
        (PredictRequest, {"premise": " \t", "hypothesis": "x"}, "premise must not be empty or only whitespace"),
        (PredictRequest, {"premise": "a\ud800", "hypothesis": "x"}, "premise is not valid Unicode text"),
        (PredictRequest, ["x"], "request body must be a JSON object, got array"),
        (BatchPredictRequest, {"pairs": [PAIR] * 3 + [{**PAIR, "premise": " "}]}, "pairs[3].premise must not be empty"),
        (BatchPredictRequest, {"pairs": [PAIR, {"premise": 1.5, "hypothesis": "x"}]}, "pairs[1].premise must be a"),
        (BatchPredictRequest, {"pairs": [PAIR, None]}, "pairs[1] must be an object, got null"),
        (BatchPredictRequest, {"pairs": None}, "pairs must be an array, got null"),
        (BatchPredictRequest, {"premises": ["a", "b"], "hypotheses": ["c", "d", "e"]}, "same length (2 != 3)"),
        (BatchPredictRequest, {"premises": ["a", 7], "hypotheses": ["c", "d"]}, "premises[1] must be a string"),
        (BatchPredictRequest, {"premises": "a", "hypotheses": ["c"]}, "premises must be an array, got string"),
        (BatchPredictRequest, {"hypotheses": ["c"]}, "premises is required"),
        (ZeroShotRequest, {"text": 5, "labels": ["a"]}, "text must be a string, got number"),
        (ZeroShotRequest, {"text": "x", "labels": ["a", 1]}, "labels[1] must be a string, got number"),
        (ZeroShotRequest, {"text": "x", "labels": ["a"], "multi_label": 1}, "multi_label must be true or false"),
        (ZeroShotRequest, {"text": "x", "labels": ["a"], "hypothesis_template": 3}, "hypothesis_template must be"),
        (ZeroShotRequest, {"texts": ["x", None], "labels": ["a"]}, "texts[1] must be a string, got null"),
        (ZeroShotRequest, {"text": "x", "labels": ["a", " a"]}, "labels must be unique; repeated: ['a']"),
    ],
)
def test_messages_name_the_field_and_types_are_strict(model, body, message: str) -> None:
    error = error_of(model, body)
    assert message in error.message and error.status == 400


def test_unknown_fields_are_ignored_and_labels_stripped() -> None:
    request = validate(ZeroShotRequest, {"text": "x", "labels": [" a ", "b"], "extra": {"any": 1}}, LIMITS)
    assert request.labels == ["a", "b"] and request.hypothesis_template == "This example is {}."
    assert not request.many and request.all_texts() == ["x"] and request.multi_label is False
    assert validate(PredictRequest, {**PAIR, "id": 7}, LIMITS).pair() == Pair(**PAIR)


def test_both_batch_forms_give_the_same_pairs() -> None:
    by_pairs = validate(BatchPredictRequest, {"pairs": [PAIR, PAIR]}, LIMITS).to_pairs()
    by_lists = validate(BatchPredictRequest, {"premises": ["A dog runs."] * 2, "hypotheses": ["An animal moves."] * 2})
    assert by_pairs == by_lists.to_pairs() == [Pair(**PAIR)] * 2


def test_limits_come_from_the_context_not_the_code() -> None:
    body = {"pairs": [PAIR] * 5}
    error = error_of(BatchPredictRequest, body)
    assert error.status == 413 and "5 pairs is more than the limit of 4 per request" in error.message
    assert len(validate(BatchPredictRequest, body, Limits(max_pairs=5)).to_pairs()) == 5
    assert len(validate(BatchPredictRequest, body).to_pairs()) == 5  # no limits given: none applied
    error = error_of(ZeroShotRequest, {"texts": ["x", "y"], "labels": ["a", "b", "c"]})
    assert error.status == 413 and "2 texts x 3 labels" in error.message


def test_the_count_is_checked_before_the_items() -> None:
    # 10 000 invalid pairs over a limit of 4: 413 at once, not 10 000 item errors
    error = error_of(BatchPredictRequest, {"pairs": [{"premise": 1}] * 10_000})
    assert error.status == 413


def test_expanded_characters_are_counted_and_capped() -> None:
    body = {"texts": ["abcd", "ef"], "labels": ["x", "yy"], "hypothesis_template": "{{{}}}"}
    request = validate(ZeroShotRequest, body, LIMITS)
    pairs = zero_shot_pairs(request.all_texts(), request.labels, request.hypothesis_template)
    assert request.expanded_chars() == sum(pair.characters for pair in pairs) == 2 * 6 + 2 * (3 + 4)
    error = error_of(ZeroShotRequest, body, Limits(max_expanded_chars=25))
    assert error.status == 413 and "NLI_MAX_EXPANDED_CHARS" in error.message and "fewer labels" in error.message


BAD_TEMPLATES = ["{0}", "{x}", "{.a}", "{{}}{.AAAA}", "{:>3000000}", "{}{}", "{!r}", "{[0]}", "{:{}}", "{", "a}b"]
BAD_TEMPLATES += ["{{}}"]


@pytest.mark.parametrize("template", BAD_TEMPLATES)
def test_templates_other_than_one_bare_slot_are_refused(template: str) -> None:
    error = error_of(ZeroShotRequest, {"text": "x", "labels": ["a"], "hypothesis_template": template})
    assert error.status == 400 and error.message.startswith("hypothesis_template ")
    with pytest.raises(ValueError, match="hypothesis_template"):
        template_parts(template)
    with pytest.raises(ValueError):
        zero_shot_pairs(["x"], ["a"], template)


@pytest.mark.parametrize(
    ("template", "statement"),
    [("This example is {}.", "This example is L."), ("{}", "L"), ("{{{}}}", "{L}"), ("}}{{ {} {{x}}", "}{ L {x}")],
)
def test_good_templates_expand_as_format_would(template: str, statement: str) -> None:
    assert validate(ZeroShotRequest, {"text": "t", "labels": ["L"], "hypothesis_template": template}, LIMITS)
    assert zero_shot_pairs(["t"], ["L"], template) == [Pair("t", statement)]
    assert template.format("L") == statement


_literal = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20).map(
    lambda text: text.replace("{", "{{").replace("}", "}}")
)


@given(before=_literal, after=_literal, label=st.text(max_size=10))
def test_expansion_equals_str_format_for_every_valid_template(before: str, after: str, label: str) -> None:
    template = before + "{}" + after
    assert zero_shot_pairs(["t"], [label], template)[0].hypothesis == template.format(label)
    head, tail = template_parts(template)
    assert head + label + tail == template.format(label)


@given(st.text(alphabet="{}0x.:!r[]a ", max_size=12))
def test_the_template_check_agrees_with_string_formatter(template: str) -> None:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        parsed = None
    fields = [(name, spec, conversion) for _, name, spec, conversion in parsed or [] if name is not None]
    expected_ok = parsed is not None and fields == [("", "", None)]
    try:
        template_parts(template)
        ok = True
    except ValueError:
        ok = False
    assert ok == expected_ok
    if ok:
        assert zero_shot_pairs(["t"], ["L"], template)[0].hypothesis == template.format("L")


def test_the_schemas_import_neither_flask_nor_torch() -> None:
    code = (
        "import sys; import nli_service.schemas, nli_service.cli; "
        "sys.exit(any(name in sys.modules for name in ('flask', 'werkzeug', 'torch', 'transformers', 'gunicorn')))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0
