"""What the API calls: this process's model behind the request deadline, counted in metrics.

Decode and validate happen above (``api/``); tokenise, batch and forward below
(``inference/``, through the batcher with threaded workers). Every call takes the request's
:class:`RequestTiming`: when it reached the server (the deadline counts from there), how long
its client will wait, if it said so, and how to tell that the client has gone (work for it is
then dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from nli_service import metrics
from nli_service.inference import documents
from nli_service.inference.documents import Windowing
from nli_service.inference.engine import Scores
from nli_service.inference.labels import LabelMap
from nli_service.inference.types import Pair, Prediction, Span, Verdict, ZeroShotResult
from nli_service.inference.zero_shot import classify
from nli_service.serving.deadline import Deadline, enforce

T = TypeVar("T")
ClientCheck = Callable[[], bool]  # True once the client has closed its connection


@dataclass(frozen=True)
class RequestTiming:
    """What bounds one request's work, besides the service's own ``request_timeout``."""

    received_at: float | None = None  # time.monotonic() when it reached the server; None: now
    client_timeout: float | None = None  # seconds the client said it waits (counted from received_at)
    client_gone: ClientCheck | None = None


class Predictor(Protocol):
    """A model answering pairs: the engine itself, or the batcher in front of it."""

    @property
    def model_id(self) -> str: ...

    @property
    def labels(self) -> LabelMap: ...

    def describe(self) -> dict[str, Any]: ...

    def predict(self, pairs: Sequence[Pair], deadline: Deadline | None = None) -> list[Prediction]: ...

    def scores(self, pairs: Sequence[Pair], deadline: Deadline | None = None) -> Scores: ...


class _CountingTruncations:
    """``predictor``'s ``scores``, counting the truncated pairs in metrics."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @property
    def labels(self) -> LabelMap:
        return self.predictor.labels

    def scores(self, pairs: Sequence[Pair], deadline: Deadline | None = None) -> Scores:
        scores = self.predictor.scores(pairs, deadline)
        metrics.TRUNCATED_PAIRS.inc(sum(scores.truncated))
        return scores


class NLIService:
    """Classify pairs, zero-shot texts and document claims within a deadline of ``request_timeout`` seconds."""

    def __init__(self, predictor: Predictor, request_timeout: float, windowing: Windowing | None = None) -> None:
        self.predictor = predictor
        self.request_timeout = request_timeout
        self.windowing = windowing
        self._counted = _CountingTruncations(predictor)

    @property
    def model_id(self) -> str:
        return self.predictor.model_id

    def describe(self) -> dict[str, Any]:
        return self.predictor.describe()

    def predict(self, pairs: Sequence[Pair], timing: RequestTiming = RequestTiming()) -> list[Prediction]:
        """Classify ``pairs``, in input order."""

        def work(deadline: Deadline) -> list[Prediction]:
            return self.predictor.predict(pairs, deadline)

        predictions = self._within_deadline(len(pairs), timing, work)
        metrics.count_labels(prediction.label for prediction in predictions)
        metrics.TRUNCATED_PAIRS.inc(sum(prediction.truncated for prediction in predictions))
        return predictions

    def zero_shot(
        self,
        texts: list[str],
        labels: list[str],
        template: str,
        multi_label: bool,
        timing: RequestTiming = RequestTiming(),
    ) -> list[ZeroShotResult]:
        """Rank ``labels`` for each text, all label pairs in one engine call."""

        def work(deadline: Deadline) -> list[ZeroShotResult]:
            return classify(self._counted, texts, labels, template, multi_label, deadline)

        return self._within_deadline(len(texts) * len(labels), timing, work)

    def _documents(self) -> Windowing:
        if self.windowing is None:
            raise RuntimeError("this service was built without a tokenizer to cut documents with")
        return self.windowing

    def windows(self, document: str, claims: Sequence[str]) -> list[Span]:
        """The overlapping windows ``document`` is read in, each fitting the model with every claim."""
        return self._documents().windows(document, claims)

    def verify(
        self, windows: Sequence[Span], claims: Sequence[str], timing: RequestTiming = RequestTiming()
    ) -> list[Verdict]:
        """Each claim's verdict over ``windows`` (from :meth:`windows`), every pair in one engine call."""
        windowing = self._documents()

        def work(deadline: Deadline) -> list[Verdict]:
            return documents.verify(self._counted, windowing, windows, claims, deadline)

        verdicts = self._within_deadline(len(windows) * len(claims), timing, work)
        metrics.count_labels(verdict.label for verdict in verdicts)
        return verdicts

    def _within_deadline(self, pairs: int, timing: RequestTiming, work: Callable[[Deadline], T]) -> T:
        seconds = min(self.request_timeout, timing.client_timeout or self.request_timeout)
        deadline = Deadline(seconds, started_at=timing.received_at, client_gone=timing.client_gone)
        with enforce(deadline):
            result = work(deadline)
        metrics.PAIRS.inc(pairs)
        return result
