"""Tiny NLI models built locally: random weights, a tokenizer made from a word list.

No network is needed: the vocabulary is written out here, the tokenizer is built
from it, and ``save_pretrained`` writes a folder the service loads like any
hub checkpoint.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, BertConfig, DistilBertConfig, RobertaConfig

DEFAULT_ID2LABEL = {0: "contradiction", 1: "entailment", 2: "neutral"}
WORDS = (
    "a an the man woman child dog cat person people is are was playing plays music guitar sleeping "
    "sitting running outside inside park street house red blue green big small happy sad two three "
    "not no yes and or with on in at of to eating food ball game car driving walking".split()
)
SAMPLE_PAIRS = [
    ("A man is playing a guitar.", "A person plays music."),
    ("Two dogs are running in the park.", "The dogs are sleeping."),
    ("A woman is eating food inside a house.", "A woman is outside."),
    ("The child is happy.", "The child is sad."),
]


def _bert_tokenizer(folder: Path, max_length: int):
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = specials + WORDS + pieces + [f"##{c}" for c in string.ascii_lowercase + string.digits]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True, model_max_length=max_length)


def _roberta_tokenizer(folder: Path, max_length: int):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    corpus = [" ".join(WORDS)] * 4 + [p + " " + h for p, h in SAMPLE_PAIRS]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    folder.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(folder))
    return RobertaTokenizerFast.from_pretrained(str(folder), model_max_length=max_length)


def build_model(
    folder: Path,
    *,
    id2label: dict[int, str] | None = None,
    architecture: str = "bert",
    hidden_size: int = 32,
    layers: int = 2,
    max_positions: int = 128,
    classifier_bias: Sequence[float] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Save a random ``architecture`` classifier (bert, roberta or distilbert) to ``folder``.

    ``classifier_bias`` zeroes the classifier weights and sets its bias, so the
    model always predicts a known output index whatever the input.
    """
    id2label = dict(DEFAULT_ID2LABEL if id2label is None else id2label)
    common = dict(
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden_size // 16),
        intermediate_size=hidden_size * 2,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
        initializer_range=0.05,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if architecture == "roberta":
        tokenizer = _roberta_tokenizer(folder, max_length=max_positions - 2)
        config = RobertaConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=max_positions,
            pad_token_id=1,
            type_vocab_size=1,
            **common,
        )
    elif architecture == "distilbert":
        tokenizer = _bert_tokenizer(folder, max_length=max_positions)
        config = DistilBertConfig(  # its attribute_map takes BERT's names for the sizes
            vocab_size=len(tokenizer),
            max_position_embeddings=max_positions,
            hidden_dim=hidden_size * 2,
            dropout=0.0,
            attention_dropout=0.0,
            **common,
        )
    else:
        tokenizer = _bert_tokenizer(folder, max_length=max_positions)
        config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=max_positions, **common)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    head = model.classifier.out_proj if architecture == "roberta" else model.classifier
    with torch.no_grad():
        if classifier_bias is None:
            head.weight.mul_(100)  # spread the logits so that probabilities differ between inputs
        else:
            head.weight.zero_()
            head.bias.copy_(torch.tensor(classifier_bias))
    model.to(dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
