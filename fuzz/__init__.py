"""Fuzzing of the service (``make fuzz``; a short version runs in ``make test``, tests/test_fuzz.py).

* :mod:`fuzz.api`: schemathesis against ``GET /openapi.json`` of a real Gunicorn service: every
  operation, positive and negative data; no 5xx, every status, content type, header and body as
  documented, no response that shows a traceback, a source path or the model's folder.
* :mod:`fuzz.validation`: hypothesis properties of the request validation layer
  (:mod:`nli_service.schemas` behind the Flask app): arbitrary JSON, mutated valid bodies, raw
  bytes and foreign content types get 200, 400, 413 or 415, never 500; every error is the
  ``{"error", "status", "request_id"}`` JSON; every 200 is a valid response model.
* ``python -m fuzz``: the long run of both, a summary, and a non-zero exit on any failure.
"""
