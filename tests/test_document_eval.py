"""training/document_eval.py on made-up SNLI-like rows (the real row is `make eval --only-documents`)."""

from __future__ import annotations

from training.document_eval import PREMISES_PER_DOCUMENT, build_documents, render
from training.nli_data import Example

LABELS = ("entailment", "neutral", "contradiction")
EXAMPLES = [
    Example(f"Premise number {number} is here", f"Hypothesis {number} {label}", label)
    for number in range(100)
    for label in LABELS
]


def test_documents_hold_30_distinct_shuffled_premises_and_claims_point_at_theirs() -> None:
    documents = build_documents(EXAMPLES, documents=4, premises_with_claims=3, seed=1)
    assert len(documents) == 4
    for document in documents:
        sentences = document.text.split(". ")
        assert len(sentences) == PREMISES_PER_DOCUMENT and len(set(sentences)) == PREMISES_PER_DOCUMENT
        assert len(document.claims) == 9 and {claim.label for claim in document.claims} == set(LABELS)
        for claim in document.claims:
            premise_end = claim.premise_end
            assert document.text[:premise_end].endswith(claim.premise + ".")
            assert claim.hypothesis.split()[1] == claim.premise.split()[2]  # a hypothesis of its premise
    orders = {tuple(document.text.split(". ")) for document in documents}
    assert len(orders) == 4  # shuffled differently each time
    assert build_documents(EXAMPLES, 4, 3, seed=1) == documents  # the seed fixes them


def test_the_section_says_whether_the_targets_are_met() -> None:
    row = {"claims": 10, "truncation": 0.4, "windows": 0.78, "pair": 0.81, "evidence_holds_premise": 0.6}
    results = {
        "documents": 2,
        "claims": 20,
        "windows_per_document": 30.0,
        "window_sentences": 2,
        "max_length": 256,
        "seconds": 1.0,
        "documents_truncated": 1.0,
        "all": row,
        "past_limit": {**row, "truncation": 0.7},
        "within_limit": row,
    }
    text = render(results)
    assert "| all claims | 10 | 40.00% | 78.00% | 81.00% | 60.00% |" in text
    assert "-3.00% (met)" in text and "+8.00% (NOT met)" in text
    assert "every run of 1 to 2 adjacent sentences" in text
