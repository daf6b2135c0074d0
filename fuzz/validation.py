"""Hypothesis properties of the validation layer: what any body gets from the three POST routes.

The app runs in-process (Flask's test client, no network); :func:`answer_problems` says what is
wrong with one answer, :func:`run` drives every strategy against an app and counts the answers.

Properties, for every body sent to ``/predict``, ``/batch-predict`` and ``/zero-shot``:

* the status is 200, 400, 413 or 415, never a 5xx (nor 408, 429: nothing here is slow or queued);
* a non-200 is exactly ``{"error": str, "status": int, "request_id": str}`` with ``status`` equal to
  the HTTP status, and the ``X-Request-ID`` header equal to ``request_id``;
* a 200 validates against its response model (:mod:`nli_service.schemas`), has no other fields, and
  answers the request: one result per pair or text, every label scored, scores sorted;
* no answer contains a traceback, a source path or the model's folder.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import hypothesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from nli_service import schemas

ROUTES = ("/predict", "/batch-predict", "/zero-shot")
ALLOWED_STATUSES = {200, 400, 413, 415}
ERROR_KEYS = {"error", "status", "request_id"}
LEAK_MARKERS = ("Traceback", 'File "', "/nli_service/")

# Settings of the app under test: small limits, so that random bodies cross them (413) often.
APP_SETTINGS = {"NLI_MAX_PAIRS": 4, "NLI_MAX_BODY_BYTES": 4096, "NLI_MAX_EXPANDED_CHARS": 2000}

PAIR = {"premise": "A man is playing a guitar.", "hypothesis": "A person plays music."}
VALID_BODIES: dict[str, list[dict[str, Any]]] = {
    "/predict": [dict(PAIR)],
    "/batch-predict": [
        {"pairs": [dict(PAIR), {"premise": "A dog runs.", "hypothesis": "The dog sleeps."}]},
        {"premises": ["A dog runs.", "A cat sleeps."], "hypotheses": ["An animal moves.", "A cat is awake."]},
    ],
    "/zero-shot": [
        {"text": "The new phone has a great camera.", "labels": ["technology", "sports"]},
        {
            "texts": ["The match went to penalties.", "Parliament passed the bill."],
            "labels": ["sports", "politics"],
            "hypothesis_template": "This example is about {}.",
            "multi_label": True,
        },
    ],
}

# -- strategies -------------------------------------------------------------------------------

SPECIAL_STRINGS = [
    "",
    " ",
    "\t\n",
    "\ud800",  # a lone surrogate: valid JSON ("\\ud800"), no valid Unicode text
    "a\udfffb",
    "\x00",
    "{}",
    "{",
    "}",
    "{{}}",
    "{0}",
    "{x}",
    "{!r}",
    "{:>10}",
    "{} {}",
    "{}" * 3,
    "é" * 50,
    "🙂",
    "x" * 3000,  # past NLI_MAX_BODY_BYTES with the rest of a body
    "a " * 600,
]
texts = st.text(max_size=40) | st.sampled_from(SPECIAL_STRINGS)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)  # json.dumps writes NaN / Infinity, json.loads reads them
    | texts
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(texts, children, max_size=6),
    max_leaves=25,
)
known_keys = st.sampled_from(
    ["premise", "hypothesis", "pairs", "premises", "hypotheses", "text", "texts", "labels"]
    + ["hypothesis_template", "multi_label"]
)
json_objects = st.dictionaries(known_keys | texts, json_values, max_size=6)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in ``value`` (the root included) as a tuple of keys and indexes."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _get(value: Any, path: tuple) -> Any:
    for part in path:
        value = value[part]
    return value


def _set(root: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    parent = _get(root, path[:-1])
    parent[path[-1]] = new
    return root


@st.composite
def _mutation(draw: st.DrawFn, value: Any) -> Any:
    """One change at one place of ``value`` (a deep copy)."""
    value = copy.deepcopy(value)
    path = draw(st.sampled_from(_paths(value)))
    node = _get(value, path)
    choices: list[str] = ["replace"]
    if isinstance(node, dict):
        choices += ["drop_key", "add_key", "null_key"] if node else ["add_key"]
    if isinstance(node, list):
        choices += ["empty", "repeat", "append"] + (["drop_item", "wrap_item"] if node else [])
    if isinstance(node, str):
        choices += ["special", "pad", "wrap", "number"]
    kind = draw(st.sampled_from(choices))
    if kind == "replace":
        return _set(value, path, draw(json_values))
    if kind == "drop_key":
        del node[draw(st.sampled_from(sorted(node)))]
    elif kind == "add_key":
        node[draw(known_keys | texts)] = draw(json_values)
    elif kind == "null_key":
        node[draw(st.sampled_from(sorted(node)))] = None
    elif kind == "empty":
        node.clear()
    elif kind == "repeat":  # past NLI_MAX_PAIRS, or duplicated labels
        node[:] = node * draw(st.integers(min_value=2, max_value=40))
    elif kind == "append":
        node.append(draw(json_values))
    elif kind == "drop_item":
        del node[draw(st.integers(min_value=0, max_value=len(node) - 1))]
    elif kind == "wrap_item":
        index = draw(st.integers(min_value=0, max_value=len(node) - 1))
        node[index] = [node[index]]
    elif kind == "special":
        return _set(value, path, draw(st.sampled_from(SPECIAL_STRINGS)))
    elif kind == "pad":
        return _set(value, path, draw(st.sampled_from(["  ", "\n", "\u00a0"])) + node + " ")
    elif kind == "wrap":
        return _set(value, path, [node])
    elif kind == "number":
        return _set(value, path, draw(st.integers() | st.floats(allow_nan=False)))
    return value


non_blank = st.text(min_size=1, max_size=60).filter(str.strip)  # surrogates excluded: valid Unicode
templates = st.tuples(st.text(max_size=20), st.text(max_size=20)).map(
    lambda parts: parts[0].replace("{", "{{").replace("}", "}}") + "{}" + parts[1].replace("{", "{{").replace("}", "}}")
)


def generated_bodies(route: str) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies built from arbitrary text in the right shape: mostly valid, so mostly 200 (some 413)."""
    pairs = st.fixed_dictionaries({"premise": non_blank, "hypothesis": non_blank})
    if route == "/predict":
        return pairs
    if route == "/batch-predict":
        lists = st.integers(min_value=1, max_value=5).flatmap(
            lambda n: st.fixed_dictionaries(
                {
                    "premises": st.lists(non_blank, min_size=n, max_size=n),
                    "hypotheses": st.lists(non_blank, min_size=n, max_size=n),
                }
            )
        )
        return st.fixed_dictionaries({"pairs": st.lists(pairs, min_size=1, max_size=5)}) | lists
    labels = st.lists(non_blank, min_size=1, max_size=5, unique_by=str.strip)
    optional = {"hypothesis_template": templates, "multi_label": st.booleans()}
    return st.fixed_dictionaries({"text": non_blank, "labels": labels}, optional=optional) | st.fixed_dictionaries(
        {"texts": st.lists(non_blank, min_size=1, max_size=3), "labels": labels}, optional=optional
    )


@st.composite
def mutated_bodies(draw: st.DrawFn, route: str) -> Any:
    """A valid body of ``route`` with one to three changes."""
    body = draw(st.sampled_from(VALID_BODIES[route]))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        body = draw(_mutation(body))
    return body


@dataclass(frozen=True)
class Sent:
    """One request: the body as bytes, its Content-Type (None: no header), and the decoded body if JSON."""

    data: bytes
    content_type: str | None
    body: Any = None


JSON_TYPES = ["application/json", "application/json; charset=utf-8", "application/vnd.api+json", "APPLICATION/JSON"]
OTHER_TYPES = [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "application/xml", ""]


def _as_json(body: Any) -> st.SearchStrategy[Sent]:
    return st.sampled_from(JSON_TYPES[:2]).map(lambda kind: Sent(json.dumps(body).encode(), kind, body))


def json_requests(route: str) -> st.SearchStrategy[Sent]:
    """Arbitrary JSON, arbitrary objects, generated and mutated valid bodies, sent as JSON."""
    return (json_values | json_objects | generated_bodies(route) | mutated_bodies(route)).flatmap(_as_json)


@st.composite
def raw_requests(draw: st.DrawFn, route: str) -> Sent:
    """Bytes that are not (quite) JSON, and bodies under a Content-Type that is not JSON."""
    valid = json.dumps(draw(st.sampled_from(VALID_BODIES[route]))).encode()
    data = draw(
        st.binary(max_size=200)
        | st.just(valid[: draw(st.integers(min_value=0, max_value=len(valid) - 1))])  # cut short
        | st.just(valid.replace(b'"', b"'"))
        | st.just(b"\xff\xfe" + valid)  # not UTF-8
        | st.just(valid.decode().encode("utf-16"))
        | st.just(b"[" * 5000 + b"]" * 5000)  # deep nesting, past the body limit
        | st.just(b"[" * 1500 + b"]" * 1500)  # deep nesting, under it
        | st.just(valid + b"\n" + valid)  # trailing data
        | st.just(b'{"premise": "a", "premise": 1, "hypothesis": "b"}')  # a repeated key
        | st.just(valid)
    )
    kind = draw(st.sampled_from(JSON_TYPES + OTHER_TYPES))
    return Sent(data, kind, None)


def requests_for(route: str) -> st.SearchStrategy[Sent]:
    return json_requests(route) | raw_requests(route)


# -- the properties ---------------------------------------------------------------------------


def _model_problem(model: type[BaseModel], answer: Any) -> str | None:
    if not isinstance(answer, dict):
        return f"the body is not a JSON object: {answer!r:.200}"
    extra = set(answer) - set(model.model_fields)
    if extra:
        return f"fields that {model.__name__} does not have: {sorted(extra)}"
    try:
        model.model_validate(answer)
    except ValidationError as error:
        return f"does not validate as {model.__name__}: {error}"
    return None


def _success_problem(route: str, body: Any, answer: Any) -> str | None:
    """What is wrong with a 200's ``answer`` to ``body`` (a dict that validated), if anything."""
    if route == "/predict":
        problem = _model_problem(schemas.PredictResponse, answer)
        if problem is None and answer["label"] not in answer["scores"]:
            problem = f"the label {answer['label']!r} has no score"
        return problem
    if route == "/batch-predict":
        problem = _model_problem(schemas.BatchPredictResponse, answer)
        count = len(body["pairs"]) if "pairs" in body else len(body["premises"])
        if problem is None and len(answer["results"]) != count:
            problem = f"{len(answer['results'])} results for {count} pairs"
        return problem
    many = "texts" in body
    problem = _model_problem(schemas.ZeroShotBatchResponse if many else schemas.ZeroShotResponse, answer)
    if problem is not None:
        return problem
    results = answer["results"] if many else [answer]
    if len(results) != (len(body["texts"]) if many else 1):
        return f"{len(results)} results for {len(body['texts'])} texts"
    labels = sorted(label.strip() for label in body["labels"])
    for result in results:
        if sorted(result["labels"]) != labels or len(result["scores"]) != len(labels):
            return f"labels {result['labels']} / {len(result['scores'])} scores for the labels {labels}"
        if result["scores"] != sorted(result["scores"], reverse=True):
            return f"scores not sorted highest first: {result['scores']}"
    return None


# Fields that name the served model on purpose (its id is the folder when NLI_MODEL is one; GET /model
# gives the folder as ``path``): the only places the model's folder may appear.
MODEL_NAME_FIELDS = ("model", "id", "requested_model", "path")


def _strings(value: Any) -> list[str]:
    """Every string in decoded JSON, keys included (iteratively: the JSON may nest deeply)."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _decoded(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # [[[...]]] deeper than the stack
        return None


def leaks(text: str, secrets: Iterable[str] = (), sent: str = "") -> list[str]:
    """The markers of a traceback or a source path in ``text``, and any of ``secrets`` (the model folder).

    JSON is read as decoded (``"File \\"x"`` shows ``File "``). A marker the request itself carried is
    not a leak (an error message may quote the client), nor a secret in a top-level field of
    :data:`MODEL_NAME_FIELDS` of a JSON object.
    """
    answer = _decoded(text)
    everything = "\n".join([text, *_strings(answer)])
    sent = "\n".join([sent, *_strings(_decoded(sent))])
    found = [marker for marker in LEAK_MARKERS if marker in everything and marker not in sent]
    if isinstance(answer, dict):
        answer = {key: value for key, value in answer.items() if key not in MODEL_NAME_FIELDS}
    haystack = text if answer is None else "\n".join(_strings(answer))
    found += [secret for secret in secrets if secret and secret in haystack and secret not in sent]
    return found


def answer_problems(
    route: str, sent: Sent, status: int, headers: Any, text: str, secrets: Iterable[str] = ()
) -> list[str]:
    """Every property that the answer (``status``, ``headers``, body ``text``) to ``sent`` breaks."""
    problems = []
    sent_text = sent.data.decode("utf-8", "replace")
    found = leaks(text, secrets, sent_text)
    if found:
        problems.append(f"the answer shows {found}")
    if status not in ALLOWED_STATUSES:
        problems.append(f"status {status}, not one of {sorted(ALLOWED_STATUSES)}")
    if not (headers.get("Content-Type") or "").startswith("application/json"):
        problems.append(f"Content-Type {headers.get('Content-Type')!r}, not JSON")
    try:
        answer = json.loads(text)
    except ValueError:
        return [*problems, f"the body is not JSON: {text[:200]!r}"]
    if status == 200:
        body = sent.body
        if body is None:  # raw bytes: what the service decoded (json.loads also reads UTF-16 and UTF-32)
            try:
                body = json.loads(sent.data)
            except (ValueError, RecursionError):
                body = None
        if not isinstance(body, dict):
            problems.append("200 for a body that is not a JSON object")
        else:
            problem = _success_problem(route, body, answer)
            if problem:
                problems.append(problem)
    elif not isinstance(answer, dict) or set(answer) != ERROR_KEYS:
        problems.append(f"an error that is not {{error, status, request_id}}: {answer!r:.300}")
    else:
        problem = _model_problem(schemas.ErrorResponse, answer)
        if problem:
            problems.append(problem)
        if type(answer["status"]) is not int or answer["status"] != status:
            problems.append(f"status {answer['status']!r} in the body, {status} in the answer")
        if not isinstance(answer["error"], str) or not answer["error"].strip():
            problems.append(f"an empty error message: {answer['error']!r}")
        if answer["request_id"] != headers.get("X-Request-ID"):
            problems.append(f"request_id {answer['request_id']!r} != X-Request-ID {headers.get('X-Request-ID')!r}")
    return problems


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Failure:
    route: str
    sent: Sent
    status: int
    answer: str
    problems: list[str]

    def reproduction(self) -> str:
        header = f" -H 'Content-Type: {self.sent.content_type}'" if self.sent.content_type is not None else ""
        return f"curl -X POST{header} --data-binary {self.sent.data[:300]!r} $URL{self.route}"


@dataclass
class Report:
    statuses: dict[str, Counter] = field(default_factory=dict)  # route -> status -> count
    failures: list[Failure] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(sum(counter.values()) for counter in self.statuses.values())


def send(client: Any, route: str, sent: Sent) -> Any:
    headers = {} if sent.content_type is None else {"Content-Type": sent.content_type}
    return client.post(route, data=sent.data, headers=headers)


def run(
    client: Any,
    examples: int,
    secrets: Iterable[str] = (),
    seed: int | None = None,
    on_failure: Callable[[Failure], None] | None = None,
    routes: Iterable[str] = ROUTES,
) -> Report:
    """``examples`` generated requests per route of ``routes`` through ``client`` (a Flask test client).

    Every failure is recorded (the run goes on; hypothesis does not shrink); the report counts the
    statuses per route.
    """
    report = Report()
    secrets = tuple(secrets)

    def probe_of(route: str, counter: Counter) -> Callable[[], None]:
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(sent=requests_for(route))
        def probe(sent: Sent) -> None:
            response = send(client, route, sent)
            text = response.get_data(as_text=True)
            counter[response.status_code] += 1
            problems = answer_problems(route, sent, response.status_code, response.headers, text, secrets)
            if problems:
                failure = Failure(route, sent, response.status_code, text[:500], problems)
                report.failures.append(failure)
                if on_failure is not None:
                    on_failure(failure)

        return probe if seed is None else hypothesis.seed(seed)(probe)

    for route in routes:
        probe_of(route, report.statuses.setdefault(route, Counter()))()
    return report


def summary(report: Report) -> str:
    lines = [f"validation layer: {report.requests} requests, {len(report.failures)} failures"]
    for route, statuses in report.statuses.items():
        shown = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
        lines.append(f"  POST {route:<16} {sum(statuses.values()):>5}  statuses {shown}")
    for failure in report.failures[:20]:
        lines.append(f"  FAILED {failure.route} status {failure.status}: {'; '.join(failure.problems)[:500]}")
        lines.append(f"    answer {failure.answer[:300]!r}")
        lines.append(f"    {failure.reproduction()}")
    return "\n".join(lines)
