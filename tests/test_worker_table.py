"""The shared table behind least-connections accepting and core sharing (HTTP behaviour: test_gunicorn)."""

from __future__ import annotations

from nli_service.server.worker_table import WorkerTable


def test_fewest_elsewhere_ignores_this_worker_and_workers_not_accepting() -> None:
    table = WorkerTable(slots=4)
    first, second, third = table.claim(), table.claim(), table.claim()
    assert len({first, second, third}) == 3
    assert table.fewest_connections_elsewhere(first) is None  # nobody accepts yet
    table.publish_connections(first, 0)
    table.publish_connections(second, 3)
    table.publish_connections(third, 2)
    assert table.fewest_connections_elsewhere(first) == 2
    assert table.fewest_connections_elsewhere(second) == 0
    table.publish_connections(first, -1)  # stopped accepting (shutting down, or at worker_connections)
    assert table.fewest_connections_elsewhere(second) == 2


def test_a_released_slot_is_cleared_and_handed_out_again() -> None:
    table = WorkerTable(slots=2)
    first, second = table.claim(), table.claim()
    assert table.claim() is None  # full: that worker runs unbalanced
    table.publish_connections(first, 5)
    table.release(first)
    assert table.fewest_connections_elsewhere(second) is None  # the dead worker's count is gone
    assert table.claim() == first
