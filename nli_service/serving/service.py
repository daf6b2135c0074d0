"""What the API calls: this process's model behind the request deadline, counted in metrics.

Decode and validate happen above (``api/``); tokenise, batch and forward below
(``inference/``, through the batcher with threaded workers). Every call takes the
time the request reached the server, so the deadline counts from there, and may say how to
tell that its client has gone (work for it is then dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import torch

from nli_service import metrics
from nli_service.inference.labels import LabelMap
from nli_service.inference.types import Pair, Prediction, ZeroShotResult
from nli_service.inference.zero_shot import classify
from nli_service.serving.deadline import Deadline, enforce

T = TypeVar("T")
ClientCheck = Callable[[], bool]  # True once the client has closed its connection


class Predictor(Protocol):
    """A model answering pairs: the engine itself, or the batcher in front of it."""

    @property
    def model_id(self) -> str: ...

    @property
    def labels(self) -> LabelMap: ...

    def describe(self) -> dict[str, Any]: ...

    def predict(self, pairs: Sequence[Pair], deadline: Deadline | None = None) -> list[Prediction]: ...

    def logits(self, pairs: Sequence[Pair], deadline: Deadline | None = None) -> torch.Tensor: ...


class NLIService:
    """Classify pairs and zero-shot texts within a deadline of ``request_timeout`` seconds."""

    def __init__(self, predictor: Predictor, request_timeout: float) -> None:
        self.predictor = predictor
        self.request_timeout = request_timeout

    @property
    def model_id(self) -> str:
        return self.predictor.model_id

    def describe(self) -> dict[str, Any]:
        return self.predictor.describe()

    def predict(
        self, pairs: Sequence[Pair], received_at: float | None = None, client_gone: ClientCheck | None = None
    ) -> list[Prediction]:
        """Classify ``pairs``, in input order."""

        def work(deadline: Deadline) -> list[Prediction]:
            return self.predictor.predict(pairs, deadline)

        predictions = self._within_deadline(len(pairs), received_at, client_gone, work)
        metrics.count_labels(prediction.label for prediction in predictions)
        return predictions

    def zero_shot(
        self,
        texts: list[str],
        labels: list[str],
        template: str,
        multi_label: bool,
        received_at: float | None = None,
        client_gone: ClientCheck | None = None,
    ) -> list[ZeroShotResult]:
        """Rank ``labels`` for each text, all label pairs in one engine call."""

        def work(deadline: Deadline) -> list[ZeroShotResult]:
            return classify(self.predictor, texts, labels, template, multi_label, deadline)

        return self._within_deadline(len(texts) * len(labels), received_at, client_gone, work)

    def _within_deadline(
        self, pairs: int, received_at: float | None, client_gone: ClientCheck | None, work: Callable[[Deadline], T]
    ) -> T:
        deadline = Deadline(self.request_timeout, started_at=received_at, client_gone=client_gone)
        with enforce(deadline):
            result = work(deadline)
        metrics.PAIRS.inc(pairs)
        return result
