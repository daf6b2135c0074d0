"""The one-host compose stack, deploy/compose/compose.yaml (issue 17 §3).

``podman-compose config`` (PyPI's podman-compose, which parses, interpolates and merges the file
as ``podman-compose up`` would, and rejects what it cannot run) validates it; the tests then read
the merged result: every file the stack mounts exists, both replicas share Redis, are scraped by
Prometheus and are listed in nginx's upstream, their health check is /ready, and their stop grace
outlasts the service's own drain and graceful stop.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_server import promtool
from serving import PROJECT_ROOT

from nli_service.config import Settings
from nli_service.server import hooks

COMPOSE_DIR = PROJECT_ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
REPLICAS = ("nli-service-1", "nli-service-2")
DEFAULTS = Settings.from_env({})


def podman_compose_config(compose_file: Path) -> subprocess.CompletedProcess[str]:
    """``podman-compose config`` of ``compose_file`` (``--dry-run``: podman itself is not needed)."""
    podman_compose = Path(sys.executable).with_name("podman-compose")
    return subprocess.run(
        [podman_compose, "--dry-run", "-f", compose_file, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    """The stack as ``podman-compose config`` merges it."""
    result = podman_compose_config(COMPOSE_FILE)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts as {path in the container: file or folder on the host}."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE_DIR / source).resolve()
    return mounts


def mounted_file(stack: dict[str, Any], service: str, container_path: str) -> Path:
    """The host file mounted at ``container_path`` (or inside a folder mounted above it) in ``service``."""
    wanted = PurePosixPath(container_path)
    for target, source in bind_mounts(stack["services"][service]).items():
        if wanted == PurePosixPath(target) or PurePosixPath(target) in wanted.parents:
            return source / wanted.relative_to(target)
    raise AssertionError(f"{service} mounts nothing at {container_path}")


def seconds(duration: str) -> float:
    """A compose duration such as ``35s``, ``1m30s``."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def test_the_stack_is_two_replicas_nginx_redis_prometheus_and_grafana(stack: dict[str, Any]) -> None:
    assert set(stack["services"]) == {*REPLICAS, "nginx", "redis", "prometheus", "grafana"}


def test_podman_compose_refuses_a_stack_it_could_not_run(tmp_path: Path) -> None:
    broken = COMPOSE_FILE.read_text().replace("condition: service_healthy", "condition: service_ready", 1)
    (tmp_path / "compose.yaml").write_text(broken)
    result = podman_compose_config(tmp_path / "compose.yaml")
    assert result.returncode != 0 and "service_ready" in result.stderr


def test_every_file_the_stack_mounts_or_builds_from_exists(stack: dict[str, Any]) -> None:
    mounts = [source for service in stack["services"].values() for source in bind_mounts(service).values()]
    assert len(mounts) >= 6 and [source for source in mounts if not source.exists()] == []
    for replica in REPLICAS:
        build = stack["services"][replica]["build"]
        assert (Path(build["context"]) / build["dockerfile"]) == PROJECT_ROOT / "Dockerfile"
        assert (PROJECT_ROOT / "Dockerfile").is_file()
    named = {volume.split(":")[0] for s in stack["services"].values() for volume in s.get("volumes", [])}
    assert {name for name in named if not name.startswith((".", "/"))} <= set(stack["volumes"])


def test_both_replicas_run_the_same_image_and_share_redis(stack: dict[str, Any]) -> None:
    replicas = [stack["services"][name] for name in REPLICAS]
    assert replicas[0]["image"] == replicas[1]["image"]
    urls = {replica["environment"]["NLI_REDIS_URL"] for replica in replicas}
    assert len(urls) == 1
    assert re.fullmatch(r"redis://redis:6379/\d+", urls.pop())
    assert all(replica["depends_on"]["redis"]["condition"] == "service_healthy" for replica in replicas)
    # Behind nginx (one proxy): rate limits per client address count the client, not nginx.
    assert all(Settings.from_env(replica["environment"]).proxies == 1 for replica in replicas)


def test_prometheus_scrapes_both_replicas_metrics_ports_and_passes_promtool(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    config_file = mounted_file(stack, "prometheus", "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(config_file.read_text())
    targets = [
        target for job in config["scrape_configs"] for group in job["static_configs"] for target in group["targets"]
    ]
    assert sorted(targets) == [f"{replica}:{DEFAULTS.metrics_port}" for replica in REPLICAS]
    assert {job["job_name"] for job in config["scrape_configs"]} == {"nli-service"}  # what the alerts select
    # promtool on the files as the container sees them: the config, and its rule files beside it.
    (tmp_path / "prometheus.yml").write_text(config_file.read_text())
    for rule_file in config["rule_files"]:
        container_path = PurePosixPath("/etc/prometheus") / rule_file
        (tmp_path / rule_file).write_text(mounted_file(stack, "prometheus", str(container_path)).read_text())
    result = promtool("check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_nginx_runs_the_shipped_config_with_both_replicas_upstream(stack: dict[str, Any]) -> None:
    shipped = mounted_file(stack, "nginx", "/etc/nginx/conf.d/default.conf")
    assert shipped == PROJECT_ROOT / "deploy" / "nginx" / "nli-service.conf"
    include = re.search(r"^\s*include (\S+);", shipped.read_text(), re.MULTILINE)
    assert include, "the shipped config no longer includes its replicas"
    replicas_file = mounted_file(stack, "nginx", include[1])
    servers = re.findall(r"^server (\S+) (.*);", replicas_file.read_text(), re.MULTILINE)
    assert [address for address, _ in servers] == [f"{replica}:{DEFAULTS.port}" for replica in REPLICAS]
    assert all("max_fails=" in parameters and "fail_timeout=" in parameters for _, parameters in servers)
    assert {"nli-service-1", "nli-service-2"} <= set(stack["services"]["nginx"]["depends_on"])


def test_replicas_are_healthy_when_ready_and_get_longer_than_their_drain_to_stop(stack: dict[str, Any]) -> None:
    for replica in (stack["services"][name] for name in REPLICAS):
        assert f"127.0.0.1:{DEFAULTS.port}/ready" in " ".join(replica["healthcheck"]["test"])
        # SIGTERM: /ready says 503 for NLI_DRAIN_SECONDS, then Gunicorn's graceful stop; only then SIGKILL.
        assert replica.get("stop_signal", "SIGTERM") == "SIGTERM"
        assert seconds(replica["stop_grace_period"]) > DEFAULTS.drain_seconds + hooks.graceful_timeout(DEFAULTS)


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(stack: dict[str, Any]) -> None:
    datasources = yaml.safe_load(
        mounted_file(stack, "grafana", "/etc/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert [source["url"] for source in datasources if source["type"] == "prometheus"] == ["http://prometheus:9090"]
    providers = yaml.safe_load(
        mounted_file(stack, "grafana", "/etc/grafana/provisioning/dashboards/nli-service.yml").read_text()
    )["providers"]
    dashboards = [mounted_file(stack, "grafana", provider["options"]["path"]) for provider in providers]
    assert [sorted(path.name for path in folder.glob("*.json")) for folder in dashboards] == [["nli-service.json"]]
