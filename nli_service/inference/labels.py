"""Find the three NLI labels in a model's ``config.id2label``, by name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nli_service.inference.types import NLI_LABELS


class LabelError(ValueError):
    """The model's labels are not the three NLI labels."""


@dataclass(frozen=True)
class LabelMap:
    """Which output index of the model holds which NLI label."""

    names: tuple[str, ...]  # lower-case label names in the model's output order

    @classmethod
    def from_id2label(cls, id2label: Mapping[int | str, str]) -> LabelMap:
        """Read ``config.id2label``; the order is whatever the model says."""
        by_index = {int(index): str(name).strip().lower() for index, name in id2label.items()}
        if sorted(by_index) != list(range(len(by_index))):
            raise LabelError(f"id2label indices are not 0..n-1: {dict(id2label)}")
        names = tuple(by_index[i] for i in range(len(by_index)))
        missing = [label for label in NLI_LABELS if label not in names]
        if missing or len(names) != len(NLI_LABELS):
            raise LabelError(
                f"the model's labels {list(names)} are not exactly {list(NLI_LABELS)} "
                f"(missing: {missing or 'none'}); is this an NLI sequence-classification model?"
            )
        return cls(names=names)

    def index(self, label: str) -> int:
        return self.names.index(label)
