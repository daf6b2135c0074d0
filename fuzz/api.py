"""Schemathesis against a running service's ``GET /openapi.json``: every operation, positive and negative data.

Each generated request is sent over HTTP and its answer put through :data:`CHECKS`: schemathesis'
``not_a_server_error``, ``status_code_conformance``, ``content_type_conformance``,
``response_headers_conformance`` and ``response_schema_conformance``, and :func:`no_leak` (no
traceback, no source path, no model folder outside the fields that name the model). Every failure is
recorded and the run goes on, so one run sees them all; hypothesis does not shrink them, so each
comes with the request that caused it (a curl command).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure as CheckFailure
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fuzz.validation import leaks

MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
TIMEOUT = 30  # seconds per request: more than the service's NLI_REQUEST_TIMEOUT (20)


def no_leak_check(secrets: Iterable[str]) -> Callable:
    """A check: the body shows no traceback, source path or any of ``secrets`` the request did not carry."""
    secrets = tuple(secrets)

    def no_leak(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
        sent = json.dumps([case.body, dict(case.headers or {})], default=repr)  # one JSON document: leaks() reads it
        found = leaks(response.text, secrets, sent)
        if found:
            raise AssertionError(f"the answer shows {found}: {response.text[:300]}")

    return no_leak


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class Found:
    """One kind of failure: where, which check, what, how often, and the first request that caused it."""

    operation: str
    check: str
    title: str
    message: str
    status: int | None
    curl: str
    count: int = 1


@dataclass
class Report:
    statuses: dict[str, Counter] = field(default_factory=dict)  # "POST /predict" -> status -> count
    modes: dict[str, Counter] = field(default_factory=dict)  # "POST /predict" -> positive/negative -> count
    errors: dict[str, Counter] = field(default_factory=dict)  # "POST /predict" -> transport error -> count
    found: dict[tuple[str, str, str], Found] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(sum(counter.values()) for counter in self.statuses.values())

    @property
    def failures(self) -> int:
        return sum(found.count for found in self.found.values())

    def add(self, found: Found) -> None:
        key = (found.operation, found.check, found.title)
        if key in self.found:
            self.found[key].count += 1
        else:
            self.found[key] = found


def _curl(case: schemathesis.Case, base_url: str) -> str:
    try:
        return case.as_curl_command(base_url=base_url)
    except Exception as error:  # noqa: BLE001 -- a report line, never a reason to stop
        return f"(no curl: {error!r}) body={case.body!r:.300}"


def _failures(error: BaseException) -> list[BaseException]:
    if isinstance(error, FailureGroup):
        return list(error.exceptions)
    return [error]


def run(
    base_url: str,
    examples: int,
    secrets: Iterable[str] = (),
    seed: int | None = None,
    get_examples: int | None = None,
    on_found: Callable[[Found], None] | None = None,
) -> Report:
    """``examples`` cases per operation with a body (each mode), ``get_examples`` (default: the same) for the rest.

    The cases of each (operation, mode) come from one hypothesis run of ``operation.as_strategy(mode)``;
    hypothesis may stop early when it has no new inputs left, so the counts are counted, not assumed.
    """
    # Loaded as a dict: from_url leaves out the operation that served the document (GET /openapi.json).
    document = requests.get(f"{base_url}/openapi.json", timeout=TIMEOUT).json()
    schema = schemathesis.openapi.from_dict(document)
    checks = [*CHECKS, no_leak_check(secrets)]
    report = Report()
    session = requests.Session()
    started = time.monotonic()

    def probe_of(operation: Any, mode: GenerationMode, count: int) -> Callable[[], None]:
        label = operation.label
        statuses = report.statuses.setdefault(label, Counter())
        modes = report.modes.setdefault(label, Counter())
        errors = report.errors.setdefault(label, Counter())

        @settings(
            max_examples=count,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def probe(case: schemathesis.Case) -> None:
            modes[mode.value] += 1
            try:
                response = case.call(base_url=base_url, session=session, timeout=TIMEOUT)
            except requests.RequestException as error:  # a dropped connection: a worker died, or worse
                errors[type(error).__name__] += 1
                statuses["no answer"] += 1
                found = Found(label, "answer", type(error).__name__, str(error)[:500], None, _curl(case, base_url))
                report.add(found)
                if on_found is not None:
                    on_found(found)
                return
            statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=checks)
            except (FailureGroup, CheckFailure, AssertionError) as error:
                for failure in _failures(error):
                    title = getattr(failure, "title", type(failure).__name__)
                    message = getattr(failure, "message", str(failure))
                    name = (getattr(failure, "checks", ()) or (type(failure).__name__,))[0]
                    found = Found(label, name, title, message[:1000], response.status_code, _curl(case, base_url))
                    new = (label, name, title) not in report.found
                    report.add(found)
                    if new and on_found is not None:
                        on_found(found)

        return probe if seed is None else hypothesis.seed(seed)(probe)

    operations = [result.ok() for result in schema.get_all_operations()]
    documented = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}
    missing = documented - {operation.label for operation in operations}
    if missing:
        raise RuntimeError(f"schemathesis would not test {sorted(missing)}")
    for operation in operations:
        has_body = bool(operation.body)
        count = examples if has_body or get_examples is None else get_examples
        for mode in MODES:
            probe_of(operation, mode, count)()
    report.seconds = time.monotonic() - started
    return report


def summary(report: Report) -> str:
    """Requests per operation and mode, statuses, and every kind of failure."""
    lines = [f"schemathesis: {report.requests} requests in {report.seconds:.0f} s, {report.failures} failures"]
    for label, statuses in report.statuses.items():
        modes = ", ".join(f"{mode} {count}" for mode, count in sorted(report.modes[label].items()))
        shown = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items(), key=str))
        lines.append(f"  {label:<22} {sum(statuses.values()):>5} ({modes})  statuses {shown}")
    for found in report.found.values():
        lines.append(f"  FAILED {found.operation} [{found.check}] {found.title} x{found.count} (status {found.status})")
        lines.append("    " + found.message.replace("\n", "\n    ")[:800])
        lines.append(f"    {found.curl}")
    return "\n".join(lines)
