"""Readers for the NLI sets in ``../shared/data/nli`` (see its MANIFEST.md).

Every reader returns :class:`Example` rows with the label as a *name*; label codes
differ between files and are mapped by name here, never by position. Which rows may be
trained on is decided here too: SNLI validation and the even-index MNLI dev-matched rows
only. Everything else is evaluation data.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(os.environ.get("NLI_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nli"))
NLI_LABELS = ("entailment", "neutral", "contradiction")
_SNLI_CODES = {"0": "entailment", "1": "neutral", "2": "contradiction"}
_LETTERS = {"e": "entailment", "n": "neutral", "c": "contradiction"}


@dataclass(frozen=True)
class Example:
    premise: str
    hypothesis: str
    label: str  # entailment / neutral / contradiction (RTE: entailment / not_entailment)


@dataclass(frozen=True)
class VotedExample:
    premise: str
    hypothesis: str
    votes: dict[str, float]  # share of the 100 annotators per label name


def _tsv(path: Path, quoting: int = csv.QUOTE_MINIMAL) -> Iterator[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        yield from csv.DictReader(file, delimiter="\t", quoting=quoting)


def _snli(split: str) -> list[Example]:
    rows = _tsv(DATA_DIR / "snli" / f"{split}.tsv")
    return [Example(r["premise"], r["hypothesis"], _SNLI_CODES[r["label"]]) for r in rows if r["label"] in _SNLI_CODES]


def snli_validation() -> list[Example]:
    """Trainable (CC BY-SA 4.0)."""
    return _snli("validation")


def snli_test() -> list[Example]:
    """Evaluation only."""
    return _snli("test")


def _mnli(parity: int) -> list[Example]:
    rows = _tsv(DATA_DIR / "mnli" / "dev_matched_mccoy.tsv", csv.QUOTE_NONE)
    return [
        Example(r["premise"], r["hypothesis"].strip(), r["gold_label"])
        for r in rows
        if int(r["index"]) % 2 == parity and r["gold_label"] in NLI_LABELS
    ]


def mnli_even() -> list[Example]:
    """Trainable: MNLI dev-matched rows with an even index."""
    return _mnli(0)


def mnli_odd() -> list[Example]:
    """Evaluation only: MNLI dev-matched rows with an odd index."""
    return _mnli(1)


def anli_test(round_: int) -> list[Example]:
    """Evaluation only (CC BY-NC 4.0)."""
    with (DATA_DIR / "anli" / f"R{round_}" / "test.jsonl").open(encoding="utf-8") as file:
        rows = [json.loads(line) for line in file if line.strip()]
    return [Example(r["context"], r["hypothesis"], _LETTERS[r["label"]]) for r in rows]


def sick_test() -> list[Example]:
    """Evaluation only (CC BY-NC-SA 3.0): the TEST split of SICK.txt."""
    rows = _tsv(DATA_DIR / "sick" / "SICK.txt", csv.QUOTE_NONE)
    return [
        Example(r["sentence_A"], r["sentence_B"], r["entailment_label"].lower())
        for r in rows
        if r["SemEval_set"] == "TEST"
    ]


def rte_validation() -> list[Example]:
    """Evaluation only, 2-way: entailment / not_entailment."""
    names = {"0": "entailment", "1": "not_entailment"}
    return [
        Example(r["sentence1"], r["sentence2"], names[r["label"]])
        for r in _tsv(DATA_DIR / "rte" / "glue" / "validation.tsv")
    ]


def chaosnli(subset: str) -> list[VotedExample]:
    """Evaluation only (CC BY-NC 4.0): ``snli`` or ``mnli_m``, with 100 human votes each."""
    examples = []
    with (DATA_DIR / "chaosnli" / f"chaosNLI_{subset}.jsonl").open(encoding="utf-8") as file:
        for line in file:
            row = json.loads(line)
            total = sum(row["label_counter"].values())
            votes = {_LETTERS[k]: v / total for k, v in row["label_counter"].items()}
            example = row["example"]
            examples.append(VotedExample(example["premise"], example["hypothesis"], votes))
    return examples


def training_examples() -> list[Example]:
    """Everything the bundled model may be trained on."""
    return snli_validation() + mnli_even()
