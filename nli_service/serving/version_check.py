"""Check a model version in a child process before any worker serves it.

:class:`VersionCheck` forks the calling process (the Gunicorn master, whose imports the child
shares, so a check takes the time of a load, not of a Python start); the child loads the
version as a worker would (with the NLI_* settings of the environment), so the NLI-label check
runs, answers one pair, writes its verdict to a file and exits. A version that fails, crashes
or hangs never touches the master or a serving worker. The verdict is a file, not the exit
status: Gunicorn's arbiter reaps every child of the master, its workers' and this one alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from pathlib import Path

from nli_service.config import ConfigError, Settings
from nli_service.inference.engine import NLIEngine, set_torch_threads
from nli_service.inference.loader import ModelLoadError
from nli_service.inference.repository import ModelVersion
from nli_service.serving.runtime import EngineSpec

CHECK_TIMEOUT_SECONDS = 300.0  # loading a large model from a slow disk, with an ONNX export
# The arbiter's handlers would queue these for a loop the child does not run: the defaults instead.
_ARBITER_SIGNALS = (
    "SIGHUP",
    "SIGQUIT",
    "SIGINT",
    "SIGTERM",
    "SIGTTIN",
    "SIGTTOU",
    "SIGUSR1",
    "SIGUSR2",
    "SIGWINCH",
    "SIGCHLD",
)


class VersionCheck:
    """A running check of ``version``; ask :meth:`finished`, then :meth:`failure`."""

    def __init__(self, version: ModelVersion, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
        self.version = version
        self.started = time.monotonic()
        self._timeout = timeout
        self._timed_out = False
        handle, name = tempfile.mkstemp(prefix="nli-version-check-", suffix=".json")
        os.close(handle)
        self._verdict = Path(name)
        self._pid = os.fork()
        if self._pid == 0:
            _check_and_exit(version, self._verdict)

    def finished(self) -> bool:
        """Whether the check is over (killed once past its timeout)."""
        if self._verdict.stat().st_size or self._exited():
            return True
        if time.monotonic() - self.started > self._timeout:
            self._timed_out = True
            self.stop()
            return True
        return False

    def _exited(self) -> bool:
        try:
            pid, _ = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:  # already reaped by the arbiter
            return True
        return pid != 0

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGKILL)

    def failure(self) -> str | None:
        """Why the version cannot be served, or None when it passed."""
        try:
            if self._timed_out:
                return f"the check did not finish within {self._timeout:g} s"
            try:
                verdict = json.loads(self._verdict.read_text())
            except (OSError, ValueError):
                return "the check crashed before its verdict (see the log)"
            return None if verdict["ok"] else str(verdict["reason"])
        finally:
            self._verdict.unlink(missing_ok=True)


def _check_and_exit(version: ModelVersion, verdict: Path) -> None:
    """In the forked child: check, write the verdict whole (a rename), exit without the parent's exit handlers."""
    code = 1
    try:
        for name in _ARBITER_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        reason = check(version)
        written = verdict.with_suffix(".part")
        written.write_text(json.dumps({"ok": reason is None, "reason": reason}))
        written.replace(verdict)
        code = 0
    finally:
        os._exit(code)


def check(version: ModelVersion) -> str | None:
    """Load ``version`` with this environment's settings and answer one pair: the reason it fails, or None."""
    try:
        spec = EngineSpec.from_settings(Settings.from_env(), version)
        set_torch_threads(1)
        engine = NLIEngine.from_pretrained(**spec.arguments())
        engine.start(threads=1)  # the backend opens and one pair is answered
    except (ConfigError, ModelLoadError) as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - whatever breaks, the version is refused with the reason
        return f"{type(error).__name__}: {error}"
    return None
