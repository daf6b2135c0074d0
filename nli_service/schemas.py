"""The HTTP API's request and response bodies as pydantic models: one schema validates and documents.

``/predict``, ``/batch-predict`` and ``/zero-shot`` validate their bodies with these models
(strict types: a number where a string is expected is an error, never coerced; unknown
fields are ignored), and ``GET /openapi.json`` is generated from the same models. Limits
that come from the settings at run time (pairs per request, expanded zero-shot characters)
are passed in with :class:`Limits` as pydantic's validation context, never hard-coded.

:func:`validate` turns pydantic's errors into one :class:`RequestError` whose message names
the field as a client wrote it (``pairs[3].premise must not be empty or only whitespace``)
and whose status is 400, or 413 for a request over a limit.

Flask-free and torch-free: the CLI checks its zero-shot options with :class:`ZeroShotRequest`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from nli_service.inference.types import DEFAULT_TEMPLATE, Pair

MAX_ZERO_SHOT_LABELS = 64
_ERROR_TYPE = "nli_request"


# -- errors ---------------------------------------------------------------------------


class RequestError(ValueError):
    """An invalid request body: a message that names the field, and the HTTP status (400 or 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Run-time limits a request is validated against (``None``: unlimited)."""

    max_pairs: int | None = None
    max_expanded_chars: int | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        """The limits of a :class:`nli_service.config.Settings`."""
        return cls(max_pairs=settings.max_pairs, max_expanded_chars=settings.max_expanded_chars)


def _fail(message: str, status: int = 400) -> PydanticCustomError:
    """A validation error carrying our own message (after the field's name) and status."""
    return PydanticCustomError(_ERROR_TYPE, "{message}", {"message": message, "status": status})


def _limits(info: ValidationInfo) -> Limits:
    context = info.context or {}
    return context.get("limits") or Limits()


def json_type(value: object) -> str:
    """JSON's name for the type of a decoded value."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def field_name(loc: tuple[int | str, ...]) -> str:
    """``("pairs", 3, "premise")`` as ``pairs[3].premise``."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _message(error: Any) -> tuple[str, int]:
    kind, where, value = error["type"], field_name(error["loc"]), error.get("input")
    ctx = error.get("ctx") or {}
    if kind == _ERROR_TYPE:
        return (f"{where} {ctx['message']}" if where else ctx["message"]), ctx.get("status", 400)
    where = where or "request body"
    if kind == "missing":
        return f"{where} is required", 400
    if kind == "string_type":
        return f"{where} must be a string, got {json_type(value)}", 400
    if kind == "list_type":
        return f"{where} must be an array, got {json_type(value)}", 400
    if kind == "bool_type":
        return f"{where} must be true or false, got {json_type(value)}", 400
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where} must be {'a JSON' if where == 'request body' else 'an'} object, got {json_type(value)}", 400
    return f"{where}: {error['msg']}", 400


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], body: object, limits: Limits | None = None) -> M:
    """``body`` (decoded JSON) as ``model``, strictly; :class:`RequestError` for the first problem found."""
    try:
        return model.model_validate(body, strict=True, context={"limits": limits or Limits()})
    except ValidationError as error:
        message, status = _message(error.errors(include_url=False)[0])
        raise RequestError(message, status) from None


# -- field types ----------------------------------------------------------------------


def _text(value: str) -> str:
    if not value.strip():
        raise _fail("must not be empty or only whitespace")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON allows lone surrogates ("\ud800"); no tokenizer does
        raise _fail("is not valid Unicode text (lone surrogate)") from None
    return value


_TEXT_SCHEMA = {"minLength": 1, "pattern": r"\S"}

Text = Annotated[str, Strict(), AfterValidator(_text), Field(json_schema_extra=_TEXT_SCHEMA)]
"""A non-blank string of valid Unicode (no lone surrogates)."""

Label = Annotated[
    str, Strict(), AfterValidator(_text), AfterValidator(str.strip), Field(json_schema_extra=_TEXT_SCHEMA)
]


def template_parts(template: str) -> tuple[str, str]:
    """The text before and after the one ``{}`` of a zero-shot template, ``{{`` / ``}}`` unescaped.

    ``ValueError`` (naming ``hypothesis_template``) for anything but exactly one bare ``{}``
    among literal text: no other field, index, attribute, conversion or format spec. The
    template is only parsed, never formatted.
    """
    braces = 'write "{{" or "}}" for a literal brace'
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        raise ValueError(f'hypothesis_template has an unmatched "{{" or "}}"; {braces}') from None
    fields = [index for index, (_, name, _, _) in enumerate(parsed) if name is not None]
    if not fields:
        raise ValueError('hypothesis_template must contain "{}" where the label goes')
    rule = (
        'hypothesis_template may hold only one "{}" and no other fields, indexes, attributes, conversions '
        "or format specs"
    )
    if len(fields) > 1:
        raise ValueError(f"{rule} (got {len(fields)} fields); {braces}")
    _, name, spec, conversion = parsed[fields[0]]
    if name or spec or conversion:
        shown = "{" + (name or "") + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise ValueError(f"{rule} (got {shown!r}); {braces}")
    [index] = fields
    before = "".join(literal for literal, _, _, _ in parsed[: index + 1])
    after = "".join(literal for literal, _, _, _ in parsed[index + 1 :])
    return before, after


def _template(value: str) -> str:
    try:
        template_parts(value)
    except ValueError as error:
        raise _fail(str(error).removeprefix("hypothesis_template ")) from None
    return value


Template = Annotated[
    str,
    Strict(),
    AfterValidator(_text),
    AfterValidator(_template),
    Field(
        json_schema_extra={
            **_TEXT_SCHEMA,
            "description": 'Exactly one "{}", where each label goes; "{{" and "}}" are literal braces. No other '
            "fields, indexes, attributes, conversions or format specs.",
        }
    ),
]


# -- requests -------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class PredictRequest(_Request):
    """One premise/hypothesis pair."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"premise": "A man is playing a guitar.", "hypothesis": "A person plays music."}]
        }
    )

    premise: Text
    hypothesis: Text

    def pair(self) -> Pair:
        return Pair(self.premise, self.hypothesis)


_EITHER_PAIRS = 'send either "pairs": [{"premise", "hypothesis"}, ...] or "premises" and "hypotheses" lists'
_PAIRS_EXAMPLE = [
    {"premise": "A dog runs.", "hypothesis": "An animal moves."},
    {"premise": "A dog runs.", "hypothesis": "The dog sleeps."},
]


def _too_many(count: int, limit: int | None) -> None:
    if limit is not None and count > limit:
        raise _fail(f"{count} pairs is more than the limit of {limit} per request; split the batch", 413)


class BatchPredictRequest(_Request):
    """Many pairs: ``pairs`` (objects) or ``premises`` and ``hypotheses`` (parallel lists), not both."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["pairs"], "not": {"anyOf": [{"required": ["premises"]}, {"required": ["hypotheses"]}]}},
                {"required": ["premises", "hypotheses"], "not": {"required": ["pairs"]}},
            ],
            "examples": [
                {"pairs": _PAIRS_EXAMPLE},
                {
                    "premises": [pair["premise"] for pair in _PAIRS_EXAMPLE],
                    "hypotheses": [pair["hypothesis"] for pair in _PAIRS_EXAMPLE],
                },
            ],
        }
    )

    # Not Optional: an explicit null is "must be an array, got null", as any other wrong type.
    pairs: list[PredictRequest] = Field(default=None, min_length=1)  # type: ignore[assignment]
    premises: list[Text] = Field(default=None, min_length=1)  # type: ignore[assignment]
    hypotheses: list[Text] = Field(default=None, min_length=1)  # type: ignore[assignment]

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, data: Any, info: ValidationInfo) -> Any:
        """The form, the lengths and the count, checked before any item (a huge batch fails fast)."""
        if not isinstance(data, dict):
            return data
        has_pairs, has_lists = "pairs" in data, "premises" in data or "hypotheses" in data
        if has_pairs == has_lists:
            raise _fail(_EITHER_PAIRS)
        if has_pairs:
            counts = [len(data["pairs"])] if isinstance(data["pairs"], list) else []
        else:
            for key in ("premises", "hypotheses"):
                if key not in data:
                    raise _fail(f"{key} is required")
            premises, hypotheses = data["premises"], data["hypotheses"]
            counts = [len(premises)] if isinstance(premises, list) and isinstance(hypotheses, list) else []
            if counts and len(premises) != len(hypotheses):
                raise _fail(f"premises and hypotheses must have the same length ({len(premises)} != {len(hypotheses)})")
        if counts and counts[0] == 0:
            raise _fail("at least one pair is required")
        if counts:
            _too_many(counts[0], _limits(info).max_pairs)
        return data

    def to_pairs(self) -> list[Pair]:
        if self.pairs is not None:
            return [item.pair() for item in self.pairs]
        return [Pair(premise, hypothesis) for premise, hypothesis in zip(self.premises, self.hypotheses, strict=True)]


class ZeroShotRequest(_Request):
    """Rank ``labels`` for ``text``, or for each of ``texts``, with one NLI pair per (text, label)."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["text"], "not": {"required": ["texts"]}},
                {"required": ["texts"], "not": {"required": ["text"]}},
            ],
            "examples": [
                {
                    "text": "The new phone has a great camera.",
                    "labels": ["technology", "sports", "politics"],
                    "hypothesis_template": "This example is about {}.",
                    "multi_label": False,
                },
                {
                    "texts": ["The match went to penalties.", "Parliament passed the bill."],
                    "labels": ["sports", "politics"],
                },
            ],
        }
    )

    text: Text = Field(default=None)  # type: ignore[assignment]
    texts: list[Text] = Field(default=None, min_length=1)  # type: ignore[assignment]
    labels: list[Label] = Field(
        json_schema_extra={"minItems": 1, "maxItems": MAX_ZERO_SHOT_LABELS, "uniqueItems": True},
        description=f"1 to {MAX_ZERO_SHOT_LABELS} unique candidate labels (compared after stripping spaces).",
    )
    hypothesis_template: Template = DEFAULT_TEMPLATE
    multi_label: bool = Field(
        default=False, description="Score each label on its own (entailment vs contradiction) instead of a softmax."
    )

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        if ("text" in data) == ("texts" in data):
            raise _fail('send either "text": str or "texts": [str, ...]')
        texts = data.get("texts")
        if isinstance(texts, list):
            if not texts:
                raise _fail("texts must hold at least one text")
            limit = _limits(info).max_pairs
            if limit is not None and len(texts) > limit:  # one pair per label, at least one label
                raise _fail(f"{len(texts)} texts is more than the limit of {limit} pairs per request", 413)
        return data

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: list[str]) -> list[str]:
        if not 1 <= len(labels) <= MAX_ZERO_SHOT_LABELS:
            raise _fail(f"must hold 1 to {MAX_ZERO_SHOT_LABELS} labels, got {len(labels)}")
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise _fail(f"must be unique; repeated: {duplicates}")
        return labels

    @model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo) -> ZeroShotRequest:
        limits = _limits(info)
        texts, labels = self.all_texts(), self.labels
        if limits.max_pairs is not None and len(texts) * len(labels) > limits.max_pairs:
            raise _fail(
                f"{len(texts)} texts x {len(labels)} labels is more than the limit of {limits.max_pairs} pairs "
                "per request",
                413,
            )
        chars = self.expanded_chars()
        if limits.max_expanded_chars is not None and chars > limits.max_expanded_chars:
            raise _fail(
                f"{len(texts)} texts x {len(labels)} labels expand to {chars} characters of model input "
                f"(each text once per label, with its hypothesis), more than the limit of "
                f"{limits.max_expanded_chars} (NLI_MAX_EXPANDED_CHARS); send shorter or fewer texts, or fewer labels",
                413,
            )
        return self

    @property
    def many(self) -> bool:
        """True for the ``texts`` form (the answer is ``{"results": [...]}``)."""
        return self.texts is not None

    def all_texts(self) -> list[str]:
        return self.texts if self.texts is not None else [self.text]

    def expanded_chars(self) -> int:
        """Characters the tokenizer gets: every text once per label, plus each label's statement."""
        before, after = template_parts(self.hypothesis_template)
        texts = self.all_texts()
        statements = sum(len(before) + len(label) + len(after) for label in self.labels)
        return len(self.labels) * sum(len(text) for text in texts) + len(texts) * statements


class VerifyRequest(_Request):
    """Claims checked against one long document, read in overlapping windows that fit the model."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "document": "The museum opened in 1902. It was closed for repairs in 2019. "
                    "Since 2021 it has been open every day except Monday.",
                    "claims": ["The museum is open on Sundays.", "The museum never closed."],
                }
            ]
        }
    )

    document: Text = Field(description="The source text: any length up to the body and expanded-input limits.")
    claims: list[Text] = Field(min_length=1, description="Statements to check against the document.")

    @model_validator(mode="before")
    @classmethod
    def _claim_count(cls, data: Any, info: ValidationInfo) -> Any:
        """The number of claims, checked before any claim (a huge list fails fast)."""
        claims = data.get("claims") if isinstance(data, dict) else None
        if isinstance(claims, list):
            if not claims:
                raise _fail("claims must hold at least one claim")
            limit = _limits(info).max_pairs
            if limit is not None and len(claims) > limit:  # one pair per claim at least
                raise _fail(f"{len(claims)} claims is more than the limit of {limit} pairs per request", 413)
        return data

    @model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo) -> VerifyRequest:
        limit = _limits(info).max_expanded_chars
        chars = self.expanded_chars()
        if limit is not None and chars > limit:
            raise _fail(
                f"{len(self.claims)} claims x a document of {len(self.document)} characters expand to at least "
                f"{chars} characters of model input (the document once per claim, with the claim), more than the "
                f"limit of {limit} (NLI_MAX_EXPANDED_CHARS); send a shorter document or fewer claims",
                413,
            )
        return self

    def expanded_chars(self) -> int:
        """The least the tokenizer gets: the whole document once per claim, plus the claim with each window."""
        return len(self.claims) * len(self.document) + sum(len(claim) for claim in self.claims)


def windows_limit_message(windows: int, claims: int, limit: int) -> str:
    """Why a document read in ``windows`` windows with ``claims`` claims is over ``NLI_MAX_PAIRS`` (413)."""
    return (
        f"the document is read in {windows} windows; {windows} windows x {claims} claims is {windows * claims} pairs, "
        f"more than the limit of {limit} pairs per request (NLI_MAX_PAIRS); send a shorter document or fewer claims"
    )


# -- responses ------------------------------------------------------------------------

_SCORES_EXAMPLE = {"contradiction": 0.0012, "entailment": 0.9871, "neutral": 0.0117}
_MODEL_FIELD = Field(description="The served model's id (hub id or folder).")


class Prediction(BaseModel):
    """One pair's label and every label's probability (the probabilities sum to 1)."""

    label: str = Field(description="The most probable label, lower case, as the model's config.id2label names it.")
    scores: dict[str, float] = Field(description="Probability of each of the model's labels.")
    truncated: bool = Field(
        description="True when the pair was longer than the model's max_length and the premise was cut: "
        "the model did not read its end (use POST /verify for long documents)."
    )


class PredictResponse(Prediction):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "label": "entailment",
                    "scores": _SCORES_EXAMPLE,
                    "truncated": False,
                    "model": "cross-encoder/nli-distilroberta-base",
                }
            ]
        }
    )

    model: str = _MODEL_FIELD


class BatchPredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {"label": "entailment", "scores": _SCORES_EXAMPLE, "truncated": False},
                        {
                            "label": "contradiction",
                            "scores": {"contradiction": 0.97, "entailment": 0.01, "neutral": 0.02},
                            "truncated": True,
                        },
                    ],
                    "model": "cross-encoder/nli-distilroberta-base",
                }
            ]
        }
    )

    results: list[Prediction] = Field(description="One prediction per pair, in input order.")
    model: str = _MODEL_FIELD


class ZeroShotResult(BaseModel):
    """The candidate labels of one text sorted by score, highest first."""

    labels: list[str]
    scores: list[float]
    truncated: bool = Field(description="True when the text was cut to fit the model's max_length.")


class ZeroShotResponse(ZeroShotResult):
    """The answer to the ``text`` form."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "labels": ["technology", "politics", "sports"],
                    "scores": [0.91, 0.05, 0.04],
                    "truncated": False,
                    "model": "cross-encoder/nli-distilroberta-base",
                }
            ]
        }
    )

    model: str = _MODEL_FIELD


class ZeroShotBatchResponse(BaseModel):
    """The answer to the ``texts`` form: one result per text, in input order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {"labels": ["sports", "politics"], "scores": [0.93, 0.07], "truncated": False},
                        {"labels": ["politics", "sports"], "scores": [0.88, 0.12], "truncated": False},
                    ],
                    "model": "cross-encoder/nli-distilroberta-base",
                }
            ]
        }
    )

    results: list[ZeroShotResult]
    model: str = _MODEL_FIELD


class Evidence(BaseModel):
    """The window of the document that decided a claim: ``document[start:end] == text``."""

    start: int = Field(description="Offset of the window's first character in the document (Unicode code points).")
    end: int = Field(description="Offset just past the window's last character.")
    text: str


class ClaimResult(Prediction):
    """One claim's result: the deciding window's label, scores and truncated flag, and that window."""

    evidence: Evidence


class VerifyResponse(BaseModel):
    """One result per claim, in input order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {
                            "label": "entailment",
                            "scores": {"contradiction": 0.01, "entailment": 0.93, "neutral": 0.06},
                            "truncated": False,
                            "evidence": {
                                "start": 62,
                                "end": 114,
                                "text": "Since 2021 it has been open every day except Monday.",
                            },
                        },
                        {
                            "label": "contradiction",
                            "scores": {"contradiction": 0.95, "entailment": 0.01, "neutral": 0.04},
                            "truncated": False,
                            "evidence": {"start": 27, "end": 61, "text": "It was closed for repairs in 2019."},
                        },
                    ],
                    "windows": 5,
                    "model": "cross-encoder/nli-distilroberta-base",
                }
            ]
        }
    )

    results: list[ClaimResult] = Field(description="One result per claim, in input order.")
    windows: int = Field(description="How many windows the document was read in.")
    model: str = _MODEL_FIELD


class ErrorResponse(BaseModel):
    """Every error: a message safe to show, the status again, and the request id (also in ``X-Request-ID``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "pairs[3].premise must not be empty or only whitespace",
                    "status": 400,
                    "request_id": "0f8fad5bd9cb469fa16570867728950e",
                }
            ]
        }
    )

    error: str
    status: int
    request_id: str


class HealthResponse(BaseModel):
    """Liveness: always 200 while the process serves."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "model": "cross-encoder/nli-distilroberta-base",
                    "fallback": False,
                    "model_loaded_at": "2026-01-01T12:00:00+00:00",
                    "uptime_seconds": 42.0,
                    "pid": 1234,
                }
            ]
        }
    )

    status: Literal["ok", "loading"]
    model: str | None
    model_version: int | None = Field(
        default=None, description="The version served, from NLI_MODEL_REPOSITORY (null without one)."
    )
    fallback: bool = Field(description="True when the bundled model serves in place of the default one.")
    model_loaded_at: str | None = Field(description="ISO 8601 time the model was loaded.")
    uptime_seconds: float
    pid: int


class ReadyResponse(BaseModel):
    """Readiness: 200 once the model is loaded (503 before)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ready", "model": "cross-encoder/nli-distilroberta-base"}]}
    )

    status: Literal["ready"]
    model: str


class CacheInfo(BaseModel):
    """Whether results are cached, and where."""

    store: Literal["memory", "redis"] | None = Field(
        description="memory: each worker's LRU; redis: shared by every worker and replica; null: no cache."
    )
    size: int | None = Field(description="Results each worker's LRU keeps (memory; 0 when off).")
    ttl_seconds: float | None = Field(description="Seconds a result stays in Redis (redis).")


class ModelInfo(BaseModel):
    """The served model and the request limits (clients split their batches by them)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "id": "cross-encoder/nli-distilroberta-base",
                    "version": "3f2a9c4e1b7d6a05-torch-float32",
                    "source": "cache",
                    "fallback": False,
                    "requested_model": "cross-encoder/nli-distilroberta-base",
                    "path": "/root/.cache/huggingface/hub/models--cross-encoder--nli-distilroberta-base/snapshots/main",
                    "labels": ["contradiction", "entailment", "neutral"],
                    "model_type": "roberta",
                    "device": "cpu",
                    "dtype": "float32",
                    "backend": "torch",
                    "quantize": "none",
                    "quantization": "none",
                    "padding_free": True,
                    "max_length": 512,
                    "batch_size": 8,
                    "max_batch_tokens": 8192,
                    "parameters": 82120707,
                    "load_seconds": 1.234,
                    "loaded_at": "2026-01-01T12:00:00+00:00",
                    "max_pairs": 256,
                    "max_body_bytes": 1048576,
                    "request_timeout": 30.0,
                    "cache": {"store": "memory", "size": 10000, "ttl_seconds": None},
                }
            ]
        },
    )

    id: str
    version: str = Field(
        description="A digest of the model's files and how they run (backend, export, dtype): results are keyed by it."
    )
    model_version: int | None = Field(
        default=None, description="The version this worker serves, from NLI_MODEL_REPOSITORY (null without one)."
    )
    repository: dict[str, Any] | None = Field(
        default=None,
        description="NLI_MODEL_REPOSITORY: path, name, versions, pinned_version, poll_seconds and the versions "
        "refused (version, path, reason, at); null without one.",
    )
    source: str = Field(description="local / cache / hub")
    fallback: bool = Field(description="True when the bundled model serves in place of the requested one.")
    requested_model: str = Field(description="The model asked for (differs from id after a fallback).")
    path: str = Field(description="The folder the model was loaded from.")
    labels: list[str] = Field(description="The model's labels, in its own order.")
    model_type: str
    device: str
    dtype: str
    backend: str
    quantize: str
    quantization: str = Field(description="How the model is quantised, in words.")
    padding_free: bool = Field(
        description="Forward passes run on the pairs' real tokens only (NLI_PADDING_FREE, torch, BERT/RoBERTa layouts)."
    )
    max_length: int
    batch_size: int
    max_batch_tokens: int
    parameters: int
    load_seconds: float
    loaded_at: str
    max_pairs: int = Field(description="Most pairs in one request (zero-shot: texts x labels).")
    max_body_bytes: int = Field(description="Largest request body in bytes.")
    request_timeout: float = Field(description="Seconds a request may take.")
    cache: CacheInfo = Field(description="The result cache (pairs answered before are not computed again).")


REQUEST_MODELS: tuple[type[BaseModel], ...] = (PredictRequest, BatchPredictRequest, ZeroShotRequest, VerifyRequest)
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    PredictResponse,
    BatchPredictResponse,
    ZeroShotResponse,
    ZeroShotBatchResponse,
    VerifyResponse,
    ErrorResponse,
    HealthResponse,
    ReadyResponse,
    ModelInfo,
)
