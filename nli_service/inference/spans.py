"""Trace spans around the engine's stages (tokenise, each forward pass), with the OpenTelemetry API only.

Which SDK (if any) receives them is the serving process's business. A span is made only inside
a recording one (a traced request, or a batch serving one): with tracing off, and for work
outside a request (the warm-up, the local CLI), the stage costs one look at the current span
(~0.4 us) instead of a no-op span (~10 us). Spans are per call or per pass, never per pair.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

P = ParamSpec("P")
R = TypeVar("R")

tracer = trace.get_tracer("nli_service.inference")


def traced(
    name: str, attributes: Callable[P, Mapping[str, AttributeValue]]
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the decorated function in a span ``name`` (inside a recording span only), with the attributes
    ``attributes`` derives from its arguments."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def in_span(*args: P.args, **kwargs: P.kwargs) -> R:
            if not trace.get_current_span().is_recording():
                return function(*args, **kwargs)
            with tracer.start_as_current_span(name, attributes=attributes(*args, **kwargs)):
                return function(*args, **kwargs)

        return in_span

    return decorate


def tokenise_attributes(engine: Any, pairs: Any, *_: Any, **__: Any) -> dict[str, AttributeValue]:
    return {"nli.pairs": len(pairs), "nli.model": engine.model_id}


def forward_attributes(engine: Any, encoded: Any, chunk: Any, *_: Any, **__: Any) -> dict[str, AttributeValue]:
    ids = encoded.features["input_ids"]
    width = max((len(ids[index]) for index in chunk), default=0)
    return {
        "nli.pairs": len(chunk),
        "nli.padded_tokens": len(chunk) * width,
        "nli.model": engine.model_id,
        "nli.backend": engine.backend.name,
    }
