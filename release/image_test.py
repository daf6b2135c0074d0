"""``make image-test``: build the container image from the committed tree, run it as a user would, stop it.

Checks, against the real image under podman (runc): it becomes ready (``/ready`` and its
``HEALTHCHECK``) on a read-only root filesystem with only the ``/data`` volume writable;
it classifies a pair with the bundled model from inside the package (the hub offline, no
model in the volume); Gunicorn is PID 1 and no process runs as root; logs are JSON on
stdout and in ``/data/logs``; metrics answer; SIGTERM drains (``/ready`` 503) and the
container exits 0 within the grace period.

With no image registry reachable, the base is a stand-in made with debootstrap (Debian's
python3); ``--base-image`` picks another (the Dockerfile's default is the official slim
Python image). pip inside the build gets this machine's CA file and local wheel folder
(the CPU torch wheel) as build-time mounts, unless ``--dockerfile-defaults``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

from release.podman import SANDBOX, podman, stand_in_base
from release.served import CheckFailed, check_bundled_fallback, wait_for_status
from release.source import PROJECT_ROOT, export_tree
from reliability.service import free_port, metric_sum, scrape

WORK_DIR = PROJECT_ROOT / "build" / "image"  # ignored by git; the debootstrap base and the build context stay here
IMAGE = "localhost/nli-service:image-test"
PACKAGE_PREFIX = "/opt/nli-service/"  # where the Dockerfile installs the package


def build_arguments(args: argparse.Namespace) -> list[str]:
    """``podman build`` options: base image, and this machine's pip sources unless the Dockerfile's own."""
    options = ["--format", "docker", "--build-arg", f"BASE_IMAGE={args.base_image}"]  # docker: keeps HEALTHCHECK
    if not args.dockerfile_defaults:
        options += [
            "--volume",
            f"{args.cert}:/run/build/ca.crt:ro",
            "--volume",
            f"{args.find_links}:/run/build/wheels:ro",
            "--build-arg",
            "PIP_OPTIONS=--cert /run/build/ca.crt --find-links /run/build/wheels",
            "--build-arg",
            f"TORCH_INDEX_URL={args.torch_index}",
        ]
    return options


def build(args: argparse.Namespace) -> tuple[str, float]:
    """Build the image from the committed tree; (commit, seconds)."""
    context = WORK_DIR / "context"
    commit = export_tree(args.source, context)
    started = time.monotonic()
    result = podman("build", *SANDBOX, *build_arguments(args), "--tag", IMAGE, str(context), timeout=3600, check=False)
    if result.returncode != 0:
        raise CheckFailed(f"podman build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return commit, time.monotonic() - started


def container_running(name: str) -> bool:
    state = podman("inspect", "--format", "{{.State.Running}}", name, check=False)
    return state.stdout.strip() == "true"


def check_inside(name: str) -> None:
    """PID 1 is Gunicorn, no process is root, the root filesystem is read-only, the log file is written."""
    command_line = podman("exec", name, "cat", "/proc/1/cmdline").stdout.replace("\0", " ")
    if "gunicorn" not in command_line:
        raise CheckFailed(f"PID 1 is not Gunicorn (SIGTERM would not reach it directly): {command_line}")
    # check=False: grep's own /proc entry is gone by the time it reads it
    status = podman("exec", name, "sh", "-c", "grep -H '^Uid:' /proc/[0-9]*/status", check=False).stdout.splitlines()
    root = [line for line in status if "0" in line.split()[1:]]
    if len(status) < 3 or root:  # master + 2 workers at least
        raise CheckFailed(f"processes running as root (real, effective, saved or fs uid 0): {root or status}")
    if podman("exec", name, "touch", "/opt/nli-service/written", check=False).returncode == 0:
        raise CheckFailed("the root filesystem is writable: run the container with --read-only")
    if podman("exec", name, "test", "-s", "/data/logs/nli_service.log", check=False).returncode != 0:
        raise CheckFailed("no log file in the /data volume")


def check_stdout_logs(name: str) -> int:
    """Gunicorn's and the app's records are JSON lines on the container's output; how many."""
    logs = podman("logs", name)
    records = [json.loads(line) for line in (logs.stdout + logs.stderr).splitlines() if line.startswith("{")]
    loggers = {record.get("logger") for record in records}
    if not {"gunicorn.error", "nli_service.access"} <= loggers:
        raise CheckFailed(f"expected Gunicorn's and the access log's JSON records on stdout/stderr, got {loggers}")
    return len(records)


def stop_and_wait(name: str, url: str, grace: float) -> tuple[float, int]:
    """SIGTERM to the container: /ready turns 503 (the drain), then it exits; (seconds, exit code)."""
    podman("kill", "--signal", "TERM", name)
    started = time.monotonic()
    wait_for_status(f"{url}/ready", 503, timeout=5, still_running=lambda: container_running(name))
    waited = podman("wait", name, timeout=grace + 30, check=False)
    seconds = time.monotonic() - started
    exit_code = int(waited.stdout.strip() or -1)
    if seconds > grace or exit_code != 0:
        raise CheckFailed(f"after SIGTERM the container exited {exit_code} in {seconds:.1f} s (grace: {grace} s)")
    return seconds, exit_code


def run_checks(args: argparse.Namespace, name: str, volume: str) -> dict:
    port, metrics_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    podman("volume", "create", volume)
    podman(
        "run", "--detach", "--name", name, *SANDBOX,
        # Writable: the /data volume, a /tmp tmpfs (as docker run and Kubernetes need it said) and /dev/shm.
        "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp", "--volume", f"{volume}:/data",
        "--health-interval", "disable",
        "--env", "NLI_HOST=127.0.0.1", "--env", f"NLI_PORT={port}", "--env", f"NLI_METRICS_PORT={metrics_port}",
        "--env", "NLI_WORKERS=2", "--env", "HF_HUB_OFFLINE=1",
        IMAGE,
    )  # fmt: skip
    running = functools.partial(container_running, name)
    ready_seconds = wait_for_status(f"{url}/ready", 200, timeout=args.ready_timeout, still_running=running)
    health = podman("healthcheck", "run", name, check=False)
    if health.returncode != 0:
        raise CheckFailed(f"the image's HEALTHCHECK failed on a ready service: {health.stdout} {health.stderr}")
    model = check_bundled_fallback(url, PACKAGE_PREFIX)
    if metric_sum(scrape(f"http://127.0.0.1:{metrics_port}/metrics"), "nli_pairs_total") < 1:
        raise CheckFailed("the metrics port does not count the pair just classified")
    check_inside(name)
    records = check_stdout_logs(name)
    stop_seconds, exit_code = stop_and_wait(name, url, args.grace)
    return {
        "ready_seconds": round(ready_seconds, 1),
        "model": model["id"],
        "json_log_records": records,
        "sigterm_to_exit_seconds": round(stop_seconds, 1),
        "exit_code": exit_code,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="HEAD", help="commit to build (default HEAD: the committed tree)")
    parser.add_argument("--base-image", help="BASE_IMAGE (default: a debootstrap stand-in with Debian's python3)")
    parser.add_argument("--dockerfile-defaults", action="store_true", help="no build-time pip extras")
    parser.add_argument("--cert", default="/etc/ssl/certs/ca-certificates.crt", help="CA file for pip in the build")
    parser.add_argument("--find-links", default="/opt/wheels", help="folder of wheels (CPU torch) for pip in the build")
    parser.add_argument("--torch-index", default="https://pypi.org/simple", help="TORCH_INDEX_URL with --find-links")
    parser.add_argument("--grace", type=float, default=30, help="seconds SIGTERM may take (Kubernetes' default)")
    parser.add_argument("--ready-timeout", type=float, default=180)
    args = parser.parse_args(argv)

    started = time.monotonic()
    args.base_image = args.base_image or stand_in_base(WORK_DIR)
    base_seconds = time.monotonic() - started
    commit, build_seconds = build(args)
    name = f"nli-image-test-{os.getpid()}"
    try:
        facts = run_checks(args, name, volume=name)
    except CheckFailed as failure:
        logs = podman("logs", "--tail", "30", name, check=False)
        print(f"FAILED: {failure}\n--- last container output ---\n{logs.stdout}{logs.stderr}", file=sys.stderr)
        return 1
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)
        podman("volume", "rm", "--force", name, check=False)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    facts = {
        "commit": commit[:12],
        "base_image": args.base_image,
        "base_seconds": round(base_seconds, 1),
        "build_seconds": round(build_seconds, 1),
        "image_mb": round(size / 1e6),
        **facts,
    }
    print("image-test passed: " + json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
