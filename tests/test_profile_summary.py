"""``make profile``'s summary of py-spy samples by thread kind and stage."""

from __future__ import annotations

from pathlib import Path

from bench.profile import summarise


def test_samples_are_shared_out_by_thread_kind_and_stage(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "thread (1): nli-batcher;MicroBatcher._run (b.py:1);NLIEngine.forward (e.py:2);Linear.forward (l.py:3) 90\n"
        "thread (1): nli-batcher;MicroBatcher._gather (b.py:4);Condition.wait (threading.py:5) 10\n"
        "thread (2): ThreadPoolExecutor-0_0;Flask.wsgi_app (f.py:6);MicroBatcher.scores (b.py:7);wait (t.py:8) 30\n"
        "thread (2): ThreadPoolExecutor-0_0;Flask.wsgi_app (f.py:6);NLIEngine._tokenize (e.py:9) 10\n"
        "thread (3): MainThread;ThreadWorker.run (gunicorn/workers/gthread.py:10) 5\n"
    )
    assert summarise(raw) == {
        "batcher": {"model forward": 0.9, "waiting in the batcher's queue": 0.1},
        "request threads": {"waiting for the batcher": 0.75, "tokenisation": 0.25},
        "main": {"Gunicorn's connection loop": 1.0},
    }
