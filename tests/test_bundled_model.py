"""The bundled model: its tokenizer, its labels, and real answers (skipped until it is trained)."""

from __future__ import annotations

import pytest

from nli_service.inference.loader import bundled_model_dir
from training import nli_data

BUNDLED = bundled_model_dir()
pytestmark = pytest.mark.skipif(not (BUNDLED / "model.safetensors").is_file(), reason="bundled model not trained yet")


def test_the_shipped_tokenizer_has_no_fixed_padding_or_truncation() -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(BUNDLED / "tokenizer.json"))
    assert tokenizer.padding is None and tokenizer.truncation is None
    assert len(tokenizer.encode("A man plays a guitar.").ids) < 20
    assert len(tokenizer.encode("word " * 300).ids) > 300


def test_it_loads_by_name_with_the_guides_label_order() -> None:
    from nli_service.inference.engine import NLIEngine

    engine = NLIEngine.from_pretrained("bundled")
    assert engine.labels.names == ("contradiction", "entailment", "neutral")
    assert engine.describe()["source"] == "bundled" and engine.dtype == "float32"


@pytest.mark.skipif(not nli_data.DATA_DIR.is_dir(), reason="shared NLI data not present")
def test_it_gives_real_answers_on_held_out_snli_test_pairs() -> None:
    from nli_service.inference.engine import NLIEngine
    from nli_service.inference.types import Pair

    examples = nli_data.snli_test()[:300]
    engine = NLIEngine.from_pretrained("bundled", batch_size=32)
    predictions = engine.predict([Pair(e.premise, e.hypothesis) for e in examples])
    accuracy = sum(p.label == e.label for p, e in zip(predictions, examples, strict=True)) / len(examples)
    assert accuracy > 0.7, accuracy
