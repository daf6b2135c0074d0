"""The CPU overlay's pod, run for real without a cluster: the service starts in a bubblewrap
sandbox built from the rendered Deployment, with a read-only root filesystem, the pod's user,
no capabilities and no privilege escalation, and an empty writable directory (what an emptyDir
is) at each of the container's volume mounts only. It must serve, keep its log and metrics files
in those volumes, and stop after SIGTERM, drained, well within the pod's termination grace.

bubblewrap is Debian's (``make test-services`` installs it); the network is the host's, so the
test reaches the service on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import requests
from k8s_manifests import ROOT, Resource, container, env_of, of_kind, rendered
from serving import metric_sum, scrape, service_env, wait_for

from nli_service.config import Settings

PAIR = {"premise": "A man is playing a guitar.", "hypothesis": "A person plays music."}
IMAGE_HOME = "/data"  # the image's HOME (Dockerfile ENV): its volume
SYSTEM_DIRS = ("/usr", "/etc")  # the image's own files stand in for these: read-only


def _read_only_dir(path: Path) -> list[str]:
    """bwrap arguments binding ``path`` read-only at the same place, its parents traversable by anyone."""
    parents = [str(parent) for parent in reversed(path.parents) if str(parent) != "/"]
    return [arg for parent in parents for arg in ("--perms", "0755", "--dir", parent)] + [
        "--ro-bind",
        str(path),
        str(path),
    ]


def sandbox(deployment: Resource) -> list[str]:
    """The bwrap + setpriv command that runs Gunicorn as the Deployment's container would."""
    pod = deployment["spec"]["template"]["spec"]
    security = container(deployment)["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    command = ["bwrap", "--die-with-parent", "--proc", "/proc", "--dev", "/dev"]
    for directory in SYSTEM_DIRS:
        command += ["--ro-bind", directory, directory]
    for name in ("bin", "lib", "lib64", "sbin"):  # merged /usr: links into it
        link = Path("/", name)
        if link.is_symlink():
            command += ["--symlink", str(link.readlink()), str(link)]
    for mount in container(deployment)["volumeMounts"]:  # an emptyDir: empty, writable by the pod's user
        command += ["--dir", mount["mountPath"], "--perms", "0777", "--tmpfs", mount["mountPath"]]
    # The code and Python itself, after the volumes: a checkout under /tmp (CI's clone) stays visible.
    command += _read_only_dir(ROOT) + _read_only_dir(Path(sys.base_prefix))
    user, group = pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
    command += ["--remount-ro", "/", "--chdir", str(ROOT)]
    command += ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups"]
    command += ["--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
    return command + [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]


def _master_pid(url: str) -> int:
    """The Gunicorn master: the parent of the worker that answers /health."""
    worker = requests.get(f"{url}/health", timeout=10).json()["pid"]
    status = Path(f"/proc/{worker}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def test_the_cpu_pod_serves_with_a_read_only_root_and_stops_within_its_grace(services) -> None:
    (deployment,) = of_kind(rendered("cpu"), "Deployment")
    pod_env = env_of(deployment)
    # The manifest's environment; the bundled model instead of the hub's, loopback ports of this test.
    env = service_env(**pod_env, HOME=IMAGE_HOME, NLI_MODEL="bundled")
    settings = Settings.from_env(env)
    service = services.start(sandbox(deployment), env)
    service.wait_ready(timeout=180)

    answer = requests.post(f"{service.url}/predict", json=PAIR, timeout=30)
    assert answer.status_code == 200, answer.text
    assert metric_sum(scrape(service.metrics_url), "nli_pairs_total") >= 1

    master = _master_pid(service.url)
    inside = Path(f"/proc/{master}/root")  # the sandbox's file system, as its processes see it
    status = Path(f"/proc/{master}/status").read_text()
    assert f"Uid:\t{deployment['spec']['template']['spec']['securityContext']['runAsUser']}" in status
    assert (inside / settings.log_dir.lstrip("/") / "nli_service.log").stat().st_size > 0
    assert list((inside / pod_env["PROMETHEUS_MULTIPROC_DIR"].lstrip("/")).glob("*.db"))

    pre_stop = container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    os.kill(master, signal.SIGTERM)  # bwrap only waits for it: Gunicorn's master is the one to stop
    wait_for(lambda: requests.get(f"{service.url}/ready", timeout=5).status_code == 503, timeout=10, what="/ready 503")
    # Draining (NLI_DRAIN_SECONDS): out of the endpoints, still answering what reaches it.
    assert requests.post(f"{service.url}/predict", json=PAIR, timeout=30).status_code == 200
    # Kubernetes kills the container terminationGracePeriodSeconds after the preStop pause began.
    returncode = service.process.wait(timeout=grace - pre_stop)
    assert returncode == 0, service.output()[-2000:]
