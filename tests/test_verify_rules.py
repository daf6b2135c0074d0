"""training/verify_rules.py's candidate rules on hand-made scores (real run: ``python -m training.verify_rules``)."""

from __future__ import annotations

from training.verify_rules import rules

# Window 0: an unrelated sentence the SNLI model calls a contradiction; window 1: the related one, entailed.
RELATEDNESS = [0.1, 1.0, 0.6]
ENTAILMENT = [0.01, 0.90, 0.20]
CONTRADICTION = [0.98, 0.05, 0.10]


def test_the_literal_rule_follows_the_highest_contradiction_even_in_an_unrelated_window() -> None:
    found = rules()
    assert found["literal, all windows"](RELATEDNESS, ENTAILMENT, CONTRADICTION) == 0  # 0.98 > 0.90
    assert found["literal, relatedness >= 0.5"](RELATEDNESS, ENTAILMENT, CONTRADICTION) == 1
    assert found["literal, all windows"]([1.0] * 3, [0.2, 0.1, 0.3], [0.1, 0.25, 0.2]) == 2  # 0.3 > 0.25


def test_the_chosen_rule_is_summac_zs_among_the_related_windows() -> None:
    found = rules()
    assert found["max(e-c), all windows"](RELATEDNESS, ENTAILMENT, CONTRADICTION) == 1
    chosen = found["chosen: /verify's deciding_window"]
    for relatedness in (RELATEDNESS, [0.0] * 3, [1.0, 0.2, 0.9]):
        assert chosen(relatedness, ENTAILMENT, CONTRADICTION) == found["max(e-c), relatedness >= 0.5"](
            relatedness, ENTAILMENT, CONTRADICTION
        )
    assert found["relatedness + e - c"]([1.0, 0.5], [0.5, 0.6], [0.0, 0.0]) == 0  # the earlier rule differs here
    assert chosen([1.0, 0.5], [0.5, 0.6], [0.0, 0.0]) == 1
