"""Reliability proofs of issue 14, each against a real Gunicorn service started as ``make run`` does.

* ``python -m reliability.soak`` (``make soak``): 20 minutes of full mixed load from a locust
  process; 5xx, p99 and every worker's RSS sampled every 10 s; docs/soak.png.
* ``python -m reliability.chaos`` (``make chaos``): kill -9 of a worker, SIGTERM to the master,
  a stalled-client flood and zero-shot template attacks, all under load; then the goodput run.
* ``python -m reliability.goodput``: 64 clients of 256-pair bodies with a 5 s client timeout;
  the share of computed pairs that reached a client in time.

Each writes its figures into its own section of docs/reliability.md (``report.write_section``).
"""
