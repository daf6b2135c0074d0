"""The Kubernetes manifests (deploy/k8s): every overlay renders with kubectl kustomize, every
object validates against a current Kubernetes release's schemas (kubernetes-validate) or, for
the custom resources, against their CRDs' schemas (deploy/k8s/crd-schemas, node), and the
rendered objects say what the service needs: probes, drain timing computed from the service's
own settings, the worker layout the service would pick for the CPU limit, a locked-down
container with a volume wherever the service writes, the metrics port kept to the monitoring
namespace, autoscaling, disruption budget, and the canary's 90/10 split.
"""

from __future__ import annotations

import ast
import json
import posixpath
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from k8s_manifests import K8S, ROOT, Resource, container, env_of, of_kind, render, rendered

from nli_service import metrics
from nli_service.config import Settings, default_layout, uses_gpu
from nli_service.server import hooks

CRD_SCHEMAS = K8S / "crd-schemas"
OVERLAYS = ("cpu", "gpu", "canary")
KUBERNETES_VERSION = "1.37.0"  # the newest release kubernetes-validate (requirements-dev.txt) has schemas for
CUSTOM_GROUPS = ("gateway.networking.k8s.io", "monitoring.coreos.com", "security.istio.io")
MONITORING_NAMESPACE = "monitoring"


def is_custom(resource: Resource) -> bool:
    return resource["apiVersion"].split("/")[0] in CUSTOM_GROUPS


def core_errors(resources: list[Resource]) -> list[str]:
    """Errors of the built-in objects against the Kubernetes release's schemas (strict: unknown fields too)."""
    errors = []
    for resource in resources:
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
            errors.append(f"{resource['kind']}/{resource['metadata']['name']}: {error.message}")
    return errors


def custom_errors(resources: list[Resource]) -> list[str]:
    """Errors of the custom resources against their CRDs' schemas (deploy/k8s/crd-schemas/validate.mjs)."""
    assert (CRD_SCHEMAS / "node_modules").is_dir(), "CRD schemas missing: run `make test-services`"
    result = subprocess.run(
        ["node", str(CRD_SCHEMAS / "validate.mjs")],
        input=json.dumps(resources),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [f"{r['kind']}/{r['name']}: {r['error']}" for r in json.loads(result.stdout) if r["error"] is not None]


def settings_of(deployment: Resource) -> Settings:
    """The settings the service would read from this container's environment."""
    return Settings.from_env(env_of(deployment))


def cores(quantity: str) -> int:
    assert quantity.isdigit(), f"CPU limit {quantity!r}: whole cores, so that the workers can follow it"
    return int(quantity)


def gunicorn_worker_tmp_dir() -> str:
    """``worker_tmp_dir`` of the service's Gunicorn config, read without running it (it reads settings)."""
    source = (ROOT / "nli_service" / "server" / "gunicorn_conf.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "worker_tmp_dir" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("gunicorn_conf.py sets no worker_tmp_dir")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def pod_labels(deployment: Resource) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def deployments(overlay: str) -> list[Resource]:
    found = of_kind(rendered(overlay), "Deployment")
    assert found, f"overlay {overlay} renders no Deployment"
    return found


def named_port(deployment: Resource, name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    (port,) = [p["containerPort"] for p in container(deployment)["ports"] if p["name"] == name_or_number]
    return port


# -- rendering and schemas ---------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_object_validates(overlay: str) -> None:
    resources = rendered(overlay)
    kinds = {resource["kind"] for resource in resources}
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
    assert expected | {"ServiceMonitor"} <= kinds
    assert core_errors([r for r in resources if not is_custom(r)]) == []
    assert custom_errors([r for r in resources if is_custom(r)]) == []
    assert all(r["metadata"].get("namespace") == "nli-service" for r in resources)


def test_validation_rejects_broken_objects() -> None:
    """The two validators above do fail: a probe on a port of the wrong type, an unknown field,
    a negative route weight and an unknown mTLS mode are each reported."""
    resources = rendered("canary")
    deployment = of_kind(resources, "Deployment")[0]
    container(deployment)["readinessProbe"]["httpGet"]["port"] = 5.5
    service = of_kind(resources, "Service")[0]
    service["spec"]["portz"] = []
    assert len(core_errors([deployment, service])) == 2

    route = of_kind(resources, "HTTPRoute")[0]
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    peer = of_kind(resources, "PeerAuthentication")[0]
    peer["spec"]["mtls"]["mode"] = "STRICTEST"
    assert len(custom_errors([route, peer])) == 2


# -- the pod ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_pre_stop_pause(overlay: str) -> None:
    for deployment in deployments(overlay):
        spec = container(deployment)
        assert spec["startupProbe"]["httpGet"]["path"] == "/health"
        assert spec["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert spec["livenessProbe"]["httpGet"]["path"] == "/health"
        settings = settings_of(deployment)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert named_port(deployment, spec[probe]["httpGet"]["port"]) == settings.port
        assert named_port(deployment, "metrics") == settings.metrics_port
        assert spec["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
        # Liveness must not kill a pod for a request that is merely slow: it waits out a deadline.
        live = spec["livenessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] > settings.request_timeout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_pre_stop_drain_and_graceful_stop(overlay: str) -> None:
    """Kubernetes kills the pod terminationGracePeriodSeconds after it starts stopping it: that
    must cover the preStop pause, the service's drain (NLI_DRAIN_SECONDS) and Gunicorn's graceful
    timeout as the service computes it from its settings."""
    for deployment in deployments(overlay):
        settings = settings_of(deployment)
        pre_stop = container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
        needed = pre_stop + settings.drain_seconds + hooks.graceful_timeout(settings)
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > needed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_is_locked_down_and_writes_only_to_volumes(overlay: str) -> None:
    for deployment in deployments(overlay):
        pod = deployment["spec"]["template"]["spec"]
        security = container(deployment)["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert pod["automountServiceAccountToken"] is False

        env, settings = env_of(deployment), settings_of(deployment)
        writes = [
            settings.log_dir,
            env["HF_HOME"],  # the model cache
            env["NLI_ONNX_CACHE"],
            env["PROMETHEUS_MULTIPROC_DIR"],
            env["TMPDIR"],
            gunicorn_worker_tmp_dir(),
        ]
        mounts = [m["mountPath"] for m in container(deployment)["volumeMounts"] if not m.get("readOnly")]
        volumes = {v["name"] for v in pod["volumes"]}
        assert {m["name"] for m in container(deployment)["volumeMounts"]} <= volumes
        for path in writes:
            assert posixpath.isabs(path), path
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), f"{path} is not on a volume"


def test_cpu_overlay_runs_the_layout_the_service_picks_for_its_cpu_limit() -> None:
    """The service sizes itself from its CPU affinity (the node's cores in a pod without the static
    CPU manager), so the manifests set the layout: the one it would pick with the limit's cores."""
    for overlay in ("cpu", "canary"):
        for deployment in deployments(overlay):
            resources = container(deployment)["resources"]
            assert resources["requests"]["cpu"] == resources["limits"]["cpu"]  # whole cores, Guaranteed QoS
            assert resources["requests"]["memory"] == resources["limits"]["memory"]
            limit = cores(resources["limits"]["cpu"])
            settings, layout = settings_of(deployment), default_layout(limit)
            assert not uses_gpu(settings.device)
            assert (settings.workers, settings.threads, settings.worker_class) == (
                layout.workers,
                layout.threads,
                layout.worker_class,
            )
            assert settings.workers * settings.torch_threads_for(settings.workers) <= limit
            assert settings.idle_cores_max_pairs == 0  # it would count the node's cores


def test_gpu_overlay_requests_a_gpu_and_runs_the_gpu_layout() -> None:
    (deployment,) = deployments("gpu")
    resources = container(deployment)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    settings = settings_of(deployment)
    assert uses_gpu(settings.device) and settings.dtype == "float16"
    layout = default_layout(cores(resources["limits"]["cpu"]), gpu=True)
    assert (settings.workers, settings.threads, settings.batch_size) == (
        layout.workers,
        layout.threads,
        layout.batch_size,
    )
    tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


# -- around the pod --------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_keeps_the_metrics_port_to_the_monitoring_namespace(overlay: str) -> None:
    resources = rendered(overlay)
    for deployment in of_kind(resources, "Deployment"):
        settings = settings_of(deployment)
        policies = [
            p
            for p in of_kind(resources, "NetworkPolicy")
            if selects(p["spec"]["podSelector"]["matchLabels"], pod_labels(deployment))
        ]
        assert len(policies) == 1
        (policy,) = policies
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        metrics_open_to, api_open = [], False
        for rule in policy["spec"]["ingress"]:
            assert rule.get("ports"), "a rule without ports opens every port"
            ports = {named_port(deployment, p["port"]) for p in rule["ports"]}
            if settings.metrics_port in ports:
                metrics_open_to.append(rule.get("from"))
            api_open |= settings.port in ports and not rule.get("from")
        assert api_open
        assert metrics_open_to == [
            [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}}}]
        ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_disruption_budget_service_and_service_monitor_find_the_pods(overlay: str) -> None:
    resources = rendered(overlay)
    for deployment in of_kind(resources, "Deployment"):
        name, labels = deployment["metadata"]["name"], pod_labels(deployment)
        (hpa,) = [
            h for h in of_kind(resources, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == name
        ]
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        cpu_targets = [m["resource"]["target"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
        assert [t["type"] for t in cpu_targets] == ["Utilization"] and 0 < cpu_targets[0]["averageUtilization"] < 100

        (pdb,) = [
            p
            for p in of_kind(resources, "PodDisruptionBudget")
            if selects(p["spec"]["selector"]["matchLabels"], labels)
        ]
        assert pdb["spec"]["maxUnavailable"] == 1
        if hpa["spec"]["minReplicas"] >= 2:
            assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]  # a drain leaves one serving

        (service,) = [s for s in of_kind(resources, "Service") if selects(s["spec"]["selector"], labels)]
        (monitor,) = [
            m
            for m in of_kind(resources, "ServiceMonitor")
            if selects(m["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
        ]
        metrics_ports = [p for p in service["spec"]["ports"] if p["name"] == monitor["spec"]["endpoints"][0]["port"]]
        assert [named_port(deployment, p["targetPort"]) for p in metrics_ports] == [
            settings_of(deployment).metrics_port
        ]
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] in {
            a["metadata"]["name"] for a in of_kind(resources, "ServiceAccount")
        }


def test_canary_splits_traffic_90_10_between_two_model_versions() -> None:
    resources = rendered("canary")
    by_track = {pod_labels(d)["track"]: d for d in of_kind(resources, "Deployment")}
    assert set(by_track) == {"stable", "canary"}
    assert env_of(by_track["stable"])["NLI_MODEL"] != env_of(by_track["canary"])["NLI_MODEL"]

    (route,) = of_kind(resources, "HTTPRoute")
    (rule,) = route["spec"]["rules"]
    services = {s["metadata"]["name"]: s for s in of_kind(resources, "Service")}
    weights = {}
    for backend in rule["backendRefs"]:
        service = services[backend["name"]]
        assert backend["port"] in {p["port"] for p in service["spec"]["ports"]}
        (track,) = [t for t, d in by_track.items() if selects(service["spec"]["selector"], pod_labels(d))]
        weights[track] = backend["weight"]
    assert weights == {"stable": 90, "canary": 10} and sum(weights.values()) == 100
    # Each track's monitor scrapes its own Service only, and labels the series with the track.
    for monitor in of_kind(resources, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        scraped = [s for s in services.values() if selects(selector, s["metadata"]["labels"])]
        assert len(scraped) == 1 and "track" in monitor["spec"]["targetLabels"]

    (peer,) = of_kind(resources, "PeerAuthentication")
    assert peer["spec"]["mtls"]["mode"] == "STRICT"
    assert all(selects(peer["spec"]["selector"]["matchLabels"], pod_labels(d)) for d in by_track.values())


def test_in_flight_autoscaling_component(tmp_path: Path) -> None:
    """components/hpa-in-flight adds the service's in-flight gauge, served by prometheus-adapter
    with the rule beside it, to the CPU overlay's autoscaler."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [posixpath.relpath(K8S / "overlays" / "cpu", tmp_path)],
                "components": [posixpath.relpath(K8S / "components" / "hpa-in-flight", tmp_path)],
            }
        )
    )
    resources = render(tmp_path)
    assert core_errors([r for r in resources if not is_custom(r)]) == []
    (hpa,) = of_kind(resources, "HorizontalPodAutoscaler")
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    gauge = metrics.IN_FLIGHT._name
    assert pods["metric"]["name"] == gauge
    (rule,) = yaml.safe_load((K8S / "components" / "hpa-in-flight" / "rules.yaml").read_text())["rules"]["custom"]
    assert rule["seriesQuery"].startswith(gauge + "{") and rule["name"]["as"] == gauge
