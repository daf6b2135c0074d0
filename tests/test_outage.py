"""serving.outage: a store that failed is skipped for a pause and its outage is logged once."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from nli_service.serving import outage as outage_module
from nli_service.serving.outage import Outage


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(outage_module, "time", SimpleNamespace(monotonic=lambda: now[0]))  # this module's clock only
    return now


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_a_failure_skips_the_store_for_the_pause_and_is_logged_once_per_outage(clock, caplog) -> None:
    outage = Outage(logging.getLogger("test.outage"), "down", "up", pause=1.0)
    caplog.set_level(logging.INFO, "test.outage")
    assert not outage.skipping()
    outage.failed(ConnectionError("refused"))
    assert outage.skipping()
    clock[0] += 0.99
    assert outage.skipping()
    clock[0] += 0.02
    assert not outage.skipping()
    outage.failed(ConnectionError("refused"))  # still down: no second warning
    assert _messages(caplog) == ["down"]
    assert caplog.records[0].error == "refused"
    outage.answered()
    outage.answered()
    assert _messages(caplog) == ["down", "up"]
    outage.failed(ConnectionError("again"))  # a new outage is logged again
    assert _messages(caplog) == ["down", "up", "down"]


def test_a_long_outage_is_repeated_every_warn_every_seconds(clock, caplog) -> None:
    outage = Outage(logging.getLogger("test.outage"), "down", "up", pause=1.0, warn_every=10.0)
    caplog.set_level(logging.INFO, "test.outage")
    for _ in range(25):  # one failure a second for 25 s
        outage.failed(TimeoutError("slow"))
        clock[0] += 1.0
    assert _messages(caplog) == ["down"] * 3  # at 0, 10 and 20 s
