"""Roll a new model version out under Gunicorn, one worker at a time, without dropping a request.

In the master, with ``NLI_MODEL_REPOSITORY`` (and no ``NLI_MODEL_VERSION`` pin): every
``NLI_MODEL_POLL_SECONDS``, and on SIGHUP, look for the version to serve (the highest one not
refused). A new one is first checked in a child process (``serving.version_check``), then loaded
in the master (with ``preload_app``, so new workers share it copy-on-write), then workers are
replaced: one worker more (like TTIN), and once it has loaded and warmed up (``worker_table``),
the oldest worker of another version is stopped gracefully; repeat until none is left. A version
that fails the check, or whose new worker is not ready within ``READY_TIMEOUT``, is refused
(``model_versions.refuse``) and the previous version serves on.

It runs in the arbiter's own loop (wrapped around ``manage_workers``, which Gunicorn calls at
least once a second), so it never races the arbiter's bookkeeping and loads models only in the
master's main thread, between forks. Gunicorn's own SIGHUP (restart every worker at once, the app
not reloaded under ``preload_app``) is replaced by "look at the repository now".
"""

from __future__ import annotations

import atexit
import gc
import logging
import signal
import time
from typing import Any

from nli_service.config import Settings
from nli_service.inference.loader import ModelLoadError
from nli_service.inference.repository import ModelVersion, versions
from nli_service.server.worker_table import TABLE
from nli_service.serving import model_versions
from nli_service.serving.runtime import preload_version
from nli_service.serving.version_check import VersionCheck

log = logging.getLogger("nli_service.server")

READY_TIMEOUT = 120.0  # seconds a new worker has to load and warm up before its version is refused


class ModelRollout:
    """The master's watch over the repository; :meth:`install` it on the arbiter in ``when_ready``."""

    def __init__(self, server: Any, settings: Settings) -> None:
        assert settings.model_repository is not None
        self.server = server
        self.settings = settings
        self.repository = settings.model_repository
        self.name = model_versions.served_name(settings)
        self.workers = server.num_workers
        self.check: VersionCheck | None = None
        self.target: ModelVersion | None = None  # being rolled out
        self.previous: ModelVersion | None = None  # served before it: back to it if it fails
        self.retiring: int | None = None  # pid of the old worker being stopped
        self.surge_since = 0.0
        self.refused: dict[int, int] = {}  # version -> its folder's stamp when refused (a changed folder is retried)
        self.served_by: dict[int, ModelVersion | None] = {}  # worker pid -> the version it was forked with
        self.look_now = False
        self.next_look = time.monotonic() + settings.model_poll_seconds

    def install(self) -> None:
        manage_workers = self.server.manage_workers

        def manage_workers_and_versions() -> None:
            try:
                self.step()
            except Exception:  # noqa: BLE001 - the master must outlive any rollout trouble
                log.exception("model rollout step failed")
            manage_workers()
            self._note_new_workers()

        self.server.manage_workers = manage_workers_and_versions
        self.server.handle_hup = self.look_at_once
        model_versions.share_refusals()
        atexit.register(self._stop_check)
        self._note_new_workers()

    def look_at_once(self) -> None:
        """SIGHUP: look at the repository now (re-checking versions refused before)."""
        log.info("SIGHUP: looking for a new model version in %s", self.repository)
        self.look_now = True

    def step(self) -> None:
        """One turn of the arbiter's loop: follow the check or the rollout under way, or look for a version."""
        if self.check is not None:
            self._follow_check()
        elif self.target is not None:
            self._follow_rollout()
        elif self.look_now or (self.settings.model_poll_seconds > 0 and time.monotonic() >= self.next_look):
            self._look()

    # -- looking and checking ---------------------------------------------------------

    def _look(self) -> None:
        again, self.look_now = self.look_now, False
        self.next_look = time.monotonic() + self.settings.model_poll_seconds
        serving = model_versions.chosen(self.settings)
        candidates = [
            found
            for found in versions(self.repository, self.name)
            if again or self.refused.get(found.version) != found.stamp()
        ]
        if not candidates or candidates[-1] == serving:
            return
        log.info("checking model version %s of %s", candidates[-1].version, self.name)
        self.check = VersionCheck(candidates[-1])

    def _follow_check(self) -> None:
        assert self.check is not None
        if not self.check.finished():
            return
        check, self.check = self.check, None
        failure = check.failure()
        if failure is not None:
            self._refuse(check.version, failure)
            return
        log.info("model version %s passed its check in %.1f s", check.version.version, time.monotonic() - check.started)
        previous = model_versions.chosen(self.settings)
        try:
            self._serve_from_now_on(check.version)
        except ModelLoadError as error:
            self._refuse(check.version, str(error))
            return
        self.previous, self.target = previous, check.version

    def _serve_from_now_on(self, version: ModelVersion) -> None:
        """Workers forked from now on serve ``version``."""
        if self.server.cfg.preload_app:
            preload_version(self.settings, version)
            gc.unfreeze()  # pre_fork froze the old model's objects; let them go (frozen again at the next fork)
            gc.collect()
        else:
            model_versions.choose(self.settings, version)

    def _refuse(self, version: ModelVersion, reason: str) -> None:
        self.refused[version.version] = version.stamp()
        model_versions.refuse(version, reason)

    def _stop_check(self) -> None:
        if self.check is not None:
            self.check.stop()

    # -- replacing workers ------------------------------------------------------------

    def _note_new_workers(self) -> None:
        """Remember the version each worker was forked with (the master's choice at that moment)."""
        current = self.server.WORKERS
        chosen = model_versions.chosen(self.settings)
        for pid in current:
            self.served_by.setdefault(pid, chosen)
        for pid in [pid for pid in self.served_by if pid not in current]:
            del self.served_by[pid]

    def _follow_rollout(self) -> None:
        workers = self.server.WORKERS
        if self.retiring is not None:
            if self.retiring in workers:
                return  # still finishing its requests
            self.retiring = None  # one worker more stays asked for: the next new one is spawned right after
            self.surge_since = time.monotonic()
        stale = sorted((worker.age, pid) for pid, worker in workers.items() if self.served_by.get(pid) != self.target)
        if not stale:
            self._finish()
            return
        if self.server.num_workers <= self.workers:
            self.server.num_workers = self.workers + 1  # one more, with the new version: spawned right after
            self.surge_since = time.monotonic()
            return
        ready = [
            pid
            for pid, worker in workers.items()
            if self.served_by.get(pid) == self.target and TABLE.is_ready(worker.age, pid)
        ]
        if len(ready) + len(stale) > self.workers:  # the new worker serves: the oldest other one can go
            self.retiring = stale[0][1]
            self.server.kill_worker(self.retiring, signal.SIGTERM)
        elif time.monotonic() - self.surge_since > READY_TIMEOUT:
            self._back_to_previous(f"its new worker was not ready within {READY_TIMEOUT:g} s")

    def _back_to_previous(self, reason: str) -> None:
        assert self.target is not None
        self._refuse(self.target, reason)
        if self.previous is None:
            self.target = None
            return
        self._serve_from_now_on(self.previous)
        self.target, self.previous = self.previous, None
        self.surge_since = time.monotonic()

    def _finish(self) -> None:
        assert self.target is not None
        self.server.num_workers = self.workers
        log.info("model version %s of %s serves on every worker", self.target.version, self.name)
        self.target = self.previous = None
