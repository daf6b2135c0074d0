from __future__ import annotations

import pytest

from nli_service.inference.labels import LabelError, LabelMap


def test_labels_follow_the_models_own_order_and_case() -> None:
    labels = LabelMap.from_id2label({"0": "ENTAILMENT", "1": "Neutral", "2": "contradiction"})
    assert labels.names == ("entailment", "neutral", "contradiction")
    assert labels.index("contradiction") == 2


def test_another_order() -> None:
    labels = LabelMap.from_id2label({0: "contradiction", 1: "entailment", 2: "neutral"})
    assert labels.index("entailment") == 1


@pytest.mark.parametrize(
    "id2label",
    [
        {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"},
        {0: "entailment", 1: "not_entailment"},
        {0: "entailment", 1: "neutral", 2: "contradiction", 3: "other"},
        {0: "entailment", 2: "neutral", 3: "contradiction"},
    ],
)
def test_models_without_the_three_nli_labels_are_refused(id2label: dict) -> None:
    with pytest.raises(LabelError):
        LabelMap.from_id2label(id2label)
