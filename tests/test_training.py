"""The training script: a short run, resumed after its first epoch, writes a servable model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training import nli_data

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not nli_data.DATA_DIR.is_dir(), reason="shared NLI data not present")
def test_training_resumes_after_an_epoch_and_writes_a_servable_model(tmp_path: Path) -> None:
    out, work = tmp_path / "model", tmp_path / "work"

    def train(epochs: int, *extra: str) -> str:
        command = [sys.executable, "-m", "training.train_nli", "--out", str(out), "--work", str(work)]
        command += ["--epochs", str(epochs), "--limit", "80", "--batch-size", "16", "--threads", "1", *extra]
        result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    train(1)
    resumed = train(2, "--resume")
    assert "resuming after epoch 1" in resumed and "epoch 1:" not in resumed and "epoch 2:" in resumed
    record = json.loads((out / "training_args.json").read_text())
    assert [row["epoch"] for row in record["history"]] == [1, 2]
    assert record["training_data"]["train"] + record["training_data"]["holdout"] == 80
    assert record["settings"]["seed"] == 13 and record["training_seconds"] > 0

    from nli_service.inference.engine import NLIEngine
    from nli_service.inference.types import Pair

    engine = NLIEngine.from_pretrained(str(out))
    assert engine.labels.names == ("contradiction", "entailment", "neutral")
    assert engine.dtype == "float32" and next(engine.model.parameters()).dtype.itemsize == 2  # fp16 on disk
    assert len(engine.predict([Pair("A man plays a guitar.", "A person makes music.")])) == 1
