"""Benchmark inputs: real SNLI test pairs when the shared data is there, else synthetic ones."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

from nli_service.inference.types import Pair

DATA_DIR = Path(os.environ.get("NLI_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nli"))
_SYNTHETIC_WORDS = "a man woman child dog plays runs sits in the park street with red ball on grass near".split()


def snli_pairs(count: int, seed: int = 0) -> list[Pair]:
    """``count`` pairs from SNLI test (evaluation data: only timed here, never trained on)."""
    path = DATA_DIR / "snli" / "test.tsv"
    rng = random.Random(seed)
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as file:
            rows = [Pair(row["premise"], row["hypothesis"]) for row in csv.DictReader(file, delimiter="\t")]
        return rng.sample(rows, min(count, len(rows)))
    words = lambda n: " ".join(rng.choice(_SYNTHETIC_WORDS) for _ in range(n))  # noqa: E731
    return [Pair(words(rng.randint(8, 20)), words(rng.randint(4, 9))) for _ in range(count)]


def long_tail(pairs: list[Pair], share: float = 0.1, seed: int = 1) -> list[Pair]:
    """Replace ``share`` of the premises by 200-400-word texts (several premises joined)."""
    rng = random.Random(seed)
    out = list(pairs)
    for index in rng.sample(range(len(out)), int(len(out) * share)):
        target = rng.randint(200, 400)
        words: list[str] = []
        while len(words) < target:
            words += rng.choice(pairs).premise.split()
        out[index] = Pair(" ".join(words[:target]), out[index].hypothesis)
    return out


def as_json(pairs: list[Pair]) -> list[dict[str, str]]:
    return [{"premise": pair.premise, "hypothesis": pair.hypothesis} for pair in pairs]
