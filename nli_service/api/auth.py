"""API keys: with ``NLI_API_KEYS_FILE`` set, every API route needs one.

The file holds one key per line, ``key`` or ``name:key`` (blank lines and ``#`` comments
skipped). A client sends ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The key is
compared with every known key in constant time; the request then carries the key's *name*
(``g.api_key_name``: in the access record, the metrics and the rate limiter's identity), never
the key. The file is re-read when it changes, so keys are added and revoked without a restart;
a file that turns unreadable keeps the last keys it had, with one warning per change.

``/health``, ``/ready``, ``/openapi.json``, the pages ``/`` and ``/docs`` and their static files stay open,
as does the metrics port.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, current_app, g, request

from nli_service.api.errors import ApiError
from nli_service.config import ConfigError

log = logging.getLogger(__name__)

# The pages (/ and /docs) and their assets are open too: they hold no data, and ask for a key themselves.
OPEN_ENDPOINTS = frozenset(
    {"health.health", "health.ready", "openapi.openapi", "static", "demo.index", "docs.docs", "docs.static"}
)
_CHALLENGE = 'Bearer realm="nli-service"'
_EXTENSION_KEY = "nli_api_keys"


@dataclass(frozen=True)
class _Key:
    name: str
    secret: bytes


def parse_keys(text: str) -> list[_Key]:
    """The keys of a keys file's ``text``; a key with no name is named by its line, never by itself."""
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, secret = line.partition(":")
        if not colon:
            name, secret = f"line-{number}", line
        name, secret = name.strip(), secret.strip()
        if not name or not secret:
            raise ValueError(f"line {number}: expected `key` or `name:key`")
        keys.append(_Key(name, secret.encode()))
    return keys


class KeyRing:
    """The keys of one file, re-read whenever the file changes."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._version: tuple[int, int, int] | None = None
        self._keys: list[_Key] = []
        try:
            self._reload()
        except (OSError, ValueError) as error:
            raise ConfigError(f"NLI_API_KEYS_FILE={path!r} cannot be used: {error}") from None

    def name_of(self, presented: str) -> str | None:
        """The name of the key ``presented``, or None. Every key is compared, in constant time each."""
        self._reload_if_changed()
        candidate = presented.encode()
        found = None
        for key in self._keys:
            if hmac.compare_digest(key.secret, candidate):
                found = key.name
        return found

    def _reload_if_changed(self) -> None:
        try:
            version = self._stat()
        except OSError:
            version = None
        if version == self._version:
            return
        with self._lock:
            if version == self._version:
                return
            try:
                self._reload()
            except (OSError, ValueError) as error:
                self._version = version  # warn once per change, not once per request
                log.warning("API keys file unusable, keeping the last keys", extra={"reason": str(error)})

    def _stat(self) -> tuple[int, int, int]:
        stat = os.stat(self.path)
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _reload(self) -> None:
        version = self._stat()
        keys = parse_keys(self.path.read_text(encoding="utf-8"))
        self._keys, self._version = keys, version
        log.info("API keys loaded", extra={"keys": len(keys)})


def presented_key() -> str | None:
    """The key the request carries: ``Authorization: Bearer <key>``, else ``X-API-Key``."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "").strip() or None


def _require_key() -> None:
    ring: KeyRing | None = current_app.extensions.get(_EXTENSION_KEY)
    if ring is None or request.endpoint in OPEN_ENDPOINTS:
        return
    presented = presented_key()
    if presented is None:
        raise ApiError(
            "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>",
            401,
            {"WWW-Authenticate": _CHALLENGE},
        )
    name = ring.name_of(presented)
    if name is None:
        raise ApiError("the API key is not valid", 401, {"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'})
    g.api_key_name = name


def init_app(app: Flask) -> None:
    """Require an API key on the API routes when ``NLI_API_KEYS_FILE`` is set."""
    path = app.config["NLI_SETTINGS"].api_keys_file
    app.extensions[_EXTENSION_KEY] = KeyRing(path) if path else None
    app.before_request(_require_key)
