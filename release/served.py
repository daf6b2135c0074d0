"""What the image and wheel checks ask of a service they started: ready, an answer, the drain."""

from __future__ import annotations

import time
from collections.abc import Callable

import requests

PAIR = {"premise": "A man is playing a guitar on stage.", "hypothesis": "A person is playing music."}


class CheckFailed(AssertionError):
    """The shipped artefact does not do what it should."""


def wait_for_status(url: str, status: int, timeout: float, still_running: Callable[[], bool]) -> float:
    """Poll ``url`` until it answers ``status``; the seconds it took. Fails if the service stops or time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not still_running():
            raise CheckFailed(f"the service stopped before {url} answered {status}")
        try:
            if requests.get(url, timeout=2).status_code == status:
                return time.monotonic() - started
        except requests.RequestException:  # not listening yet
            pass
        time.sleep(0.25)
    raise CheckFailed(f"{url} did not answer {status} within {timeout} s")


def check_bundled_fallback(base_url: str, package_path_prefix: str) -> dict:
    """The bundled model, found inside the installed package, answers a clear pair; returns /model."""
    model = requests.get(f"{base_url}/model", timeout=10).json()
    if not (model.get("fallback") is True and model.get("source") == "bundled"):
        raise CheckFailed(f"expected the bundled fallback model, /model says {model}")
    if not str(model.get("path", "")).startswith(package_path_prefix):
        raise CheckFailed(f"the bundled model was not read from the installed package ({package_path_prefix}): {model}")
    answer = requests.post(f"{base_url}/predict", json=PAIR, timeout=60)
    result = answer.json()
    if answer.status_code != 200 or result.get("label") != "entailment":
        raise CheckFailed(f"/predict of an entailed pair answered {answer.status_code}: {result}")
    if abs(sum(result["scores"].values()) - 1) > 1e-4:
        raise CheckFailed(f"the scores do not sum to 1: {result}")
    return model
