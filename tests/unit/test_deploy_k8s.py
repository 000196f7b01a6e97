"""deploy/k8s/, checked without a cluster: every overlay rendered by kubectl's own Kustomize,
validated against the Kubernetes 1.32 schemas (kubernetes-validate, strict), then every
cross-reference a wrong value would only break at the first rollout: the gateway's settings as
the pod would load them (ConfigMap, env, Secret files), probe paths against the gateway's routes
and Triton's v2 API, ports against Services, NetworkPolicies and ServiceMonitors against the pods'
labels, grace periods, the autoscaler's target, the Pod Security Standard, the Secrets the
README tells you to create."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gateway.config import Settings, load_settings
from gateway.main import create_app
from harness.deploy import TEST_API_KEY, compose, dockerfile, settings_paths
from harness.helpers import PYTHON, ROOT

K8S = ROOT / "deploy" / "k8s"
README = K8S / "README.md"
K8S_VERSION = "1.32.0"  # the cluster version the manifests target (kubectl 1.32 renders them)
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
CRDS = {"ServiceMonitor"}  # kinds without a schema in Kubernetes itself; everything else is validated
SPECIAL = {"APP_CONFIG", "APP_SECRETS_DIR"}  # read by gateway/config.py itself, not settings
WORKLOADS = ("Deployment", "StatefulSet", "Job")
TRITON_PATHS = {"/v2/health/live", "/v2/health/ready"}  # Triton's (KServe v2) health API
# What the Secrets hold in these tests: every (secret, key) the manifests read must be here, and
# documented in the README's `kubectl create secret` commands (test_secrets_are_documented).
SECRET_VALUES = {
    ("stream-ml-redis", "password"): "0123456789abcdef0123456789abcdef",
    ("stream-ml-redis", "url"): "rediss://:token-0123456789@master.example.cache.amazonaws.com:6379/0",
    ("triton-admin", "admin-key"): "test-admin-key",  # what harness.deploy.compose() gives compose
}
SECRET_FILES = {"app_auth__api_keys": TEST_API_KEY, "app_streams": "[]"}  # stream-ml-gateway's files
_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


# --- rendering ------------------------------------------------------------------------------------


def kubectl() -> str:
    """kubectl from the PATH, or one installed into the test environment beside the interpreter."""
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(PYTHON).parent))
    if found is None:
        pytest.fail(
            "kubectl is not on the PATH: these tests render deploy/k8s with `kubectl kustomize` "
            "(kubectl >= 1.27 carries Kustomize v5; Debian bookworm's kubernetes-client 1.20 is too old "
            "for components).  Install kubectl (Google's cloud-sdk Debian repository, or the Kubernetes "
            "release binary) and run them again.",
            pytrace=False,
        )
    return found


def render(folder: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {folder.relative_to(ROOT)} failed:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@dataclass(frozen=True)
class Rendered:
    """One overlay's documents, as `kubectl apply -k` would send them."""

    name: str
    docs: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.all(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(d["metadata"]["name"] == name for d in self.all(kind))

    @property
    def namespace(self) -> str:
        (ns,) = self.all("Namespace")
        name: str = ns["metadata"]["name"]
        return name

    def workloads(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in WORKLOADS]

    def selected(self, selector: dict[str, str]) -> list[dict[str, Any]]:
        """Workloads whose pods carry every label of ``selector``."""
        return [w for w in self.workloads() if selector.items() <= pod_labels(w).items()]

    def uses(self, component: str) -> bool:
        return component in components_of(K8S / "overlays" / self.name)

    @property
    def gpu(self) -> bool:
        return not self.uses("cpu-triton")


def components_of(folder: Path) -> set[str]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return {Path(c).name for c in kustomization.get("components", [])}


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    return {name: Rendered(name, render(K8S / "overlays" / name)) for name in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    return rendered[request.param]


# --- pod helpers ----------------------------------------------------------------------------------


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def containers(workload: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return list(spec["containers"]) + (list(spec.get("initContainers", [])) if init else [])


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name} in {workload['metadata']['name']}"
    return found[0]


def container_port(workload: dict[str, Any], port: int | str) -> int | None:
    """The number a Service's targetPort or a probe's port means in this workload, or None."""
    for c in containers(workload, init=False):
        for p in c.get("ports", []):
            if port in (p["containerPort"], p.get("name")):
                number: int = p["containerPort"]
                return number
    return None


def probes(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {kind: c[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe") if kind in c}


def prestop_sleep(c: dict[str, Any]) -> int:
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return int(command[1])


def expand(value: str, defined: dict[str, str], where: str) -> str:
    """Kubernetes' $(VAR) expansion, refusing a reference to a variable not defined before."""

    def one(m: re.Match[str]) -> str:
        assert m.group(1) in defined, f"{where} refers to $({m.group(1)}), which is not defined before it"
        return defined[m.group(1)]

    return _REF.sub(one, value)


def resolve_env(c: dict[str, Any], namespace: str, pod: str, doc: Rendered) -> dict[str, str]:
    """The container's environment as the kubelet would build it, with SECRET_VALUES as the Secrets."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        assert source.get("secretRef", {}).get("optional") is True, f"{c['name']}: envFrom must be optional"
    for var in c.get("env", []):
        name, where = var["name"], f"{doc.name}: {c['name']}: env {var['name']}"
        if "value" in var:
            env[name] = expand(var["value"], env, where)
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            field = ref["fieldRef"]["fieldPath"]
            env[name] = {"metadata.namespace": namespace, "metadata.name": pod}[field]
        elif "secretKeyRef" in ref:
            key = (ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
            assert key in SECRET_VALUES, f"{where}: the Secret {key} is not one the tests know (SECRET_VALUES)"
            env[name] = SECRET_VALUES[key]
        elif "configMapKeyRef" in ref:
            cm = ref["configMapKeyRef"]
            env[name] = doc.get("ConfigMap", cm["name"])["data"][cm["key"]]
        else:
            raise AssertionError(f"{where}: unexpected valueFrom {ref}")
    return env


def yaml_paths(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict) and f"{prefix}{key}" != "metrics.dimensions":
            yield from yaml_paths(value, f"{prefix}{key}.")


def kubelet_secret_volume(folder: Path, files: dict[str, str]) -> Path:
    """A Secret volume as the kubelet writes it: the files in a timestamped folder, ``..data``
    linking to it, and one link per key (AtomicWriter)."""
    folder.mkdir(parents=True)
    stamp = folder / "..2026_12_01_00_00_00.000000001"
    stamp.mkdir()
    for key, value in files.items():
        (stamp / key).write_text(value)
    (folder / "..data").symlink_to(stamp.name)
    for key in files:
        (folder / key).symlink_to(f"..data/{key}")
    return folder


def mount_of(workload: dict[str, Any], c: dict[str, Any], volume_kind: str, name: str) -> str:
    """Where the container mounts the volume that holds ``volume_kind`` ``name``."""
    volumes = [v["name"] for v in pod_spec(workload)["volumes"] if name_of(v, volume_kind) == name]
    assert len(volumes) == 1, f"no single volume of {volume_kind} {name}"
    (path,) = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == volumes[0]]
    return str(path)


def name_of(volume: dict[str, Any], kind: str) -> str | None:
    """The ConfigMap or Secret a volume holds."""
    name: str | None = volume.get(kind, {}).get("name" if kind == "configMap" else "secretName")
    return name


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    env: dict[str, str]
    workload: dict[str, Any]
    container: dict[str, Any]
    config: dict[str, Any]


def gateway(doc: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """The settings gateway-0 starts with: its ConfigMap, its environment and its Secret files."""
    sts = doc.get("StatefulSet", "gateway")
    c = container(sts, "gateway")
    env = resolve_env(c, doc.namespace, "gateway-0", doc)
    # the ConfigMap's file is where APP_CONFIG says, and the Secret's files where APP_SECRETS_DIR says
    (cm_volume,) = [v for v in pod_spec(sts)["volumes"] if "configMap" in v]
    cm = doc.get("ConfigMap", cm_volume["configMap"]["name"])
    (key,) = cm["data"]
    assert env["APP_CONFIG"] == f"{mount_of(sts, c, 'configMap', cm['metadata']['name'])}/{key}"
    assert env["APP_SECRETS_DIR"] == mount_of(sts, c, "secret", "stream-ml-gateway")
    config_file = tmp_path / key
    config_file.write_text(cm["data"][key])
    for name in [k for k in os.environ if k.startswith("APP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("APP_CONFIG", str(config_file))
    monkeypatch.setenv("APP_SECRETS_DIR", str(kubelet_secret_volume(tmp_path / "secrets", SECRET_FILES)))
    return Gateway(load_settings(), env, sts, c, yaml.safe_load(cm["data"][key]))


# --- schemas and structure ------------------------------------------------------------------------


def test_every_overlay_follows_the_kubernetes_schemas(overlay: Rendered) -> None:
    skipped = []
    for doc in overlay.docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            skipped.append(doc["kind"])
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{overlay.name}: {doc['kind']}/{doc['metadata']['name']}: {where}: {e.message}")
    assert set(skipped) <= CRDS, f"{overlay.name}: no schema for {sorted(set(skipped) - CRDS)}"
    assert bool(skipped) == overlay.uses("servicemonitor"), "only the ServiceMonitors go unvalidated"


def test_the_base_renders_and_every_component_is_used(rendered: dict[str, Rendered]) -> None:
    base = render(K8S / "base")
    assert {d["kind"] for d in base} >= {"StatefulSet", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy"}
    assert all("namespace" not in d["metadata"] for d in base), "the base is namespace-agnostic"
    components = {p.parent.name for p in (K8S / "components").glob("*/kustomization.yaml")}
    used: set[str] = set()
    for name in rendered:
        used |= components_of(K8S / "overlays" / name)
    assert components == used, f"components no overlay renders (so no test checks): {sorted(components - used)}"
    assert {"dev", "production"} <= set(rendered)


def test_every_namespaced_object_lands_in_the_overlay_namespace(overlay: Rendered) -> None:
    ns = overlay.all("Namespace")[0]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in overlay.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == overlay.namespace, f"{doc['kind']}/{doc['metadata']['name']}"
    assert not overlay.all("Secret"), "Secrets are created by hand (README.md), never committed"


# --- the gateway ----------------------------------------------------------------------------------


def test_every_app_variable_and_config_key_is_a_real_setting(
    overlay: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = gateway(overlay, tmp_path, monkeypatch)  # load_settings: extra="forbid" refuses unknown keys
    known = settings_paths()
    for key in gw.env:
        if key.startswith("APP_") and key not in SPECIAL:
            path = key.removeprefix("APP_").lower().replace("__", ".")
            assert path in known, f"{overlay.name}: {key} is not a setting ({path})"
    for path in yaml_paths(gw.config):
        assert path in known, f"{overlay.name}: config.yaml key {path} is not a setting"
    for name in SECRET_FILES:
        assert name.removeprefix("app_").replace("__", ".") in known, f"secret file {name} is not a setting"
    # and the secret files were read from a kubelet-style volume
    assert gw.settings.auth.enabled and [k.get_secret_value() for k in gw.settings.auth.api_keys] == [TEST_API_KEY]
    assert gw.settings.cluster.enabled and gw.settings.cluster.node_id == "gateway-0"


def test_the_gateway_reaches_triton_through_the_headless_service(
    overlay: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = gateway(overlay, tmp_path, monkeypatch).settings
    m = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", s.triton.url)
    assert m, f"{overlay.name}: APP_TRITON__URL {s.triton.url!r} is not dns:///<service>.<ns>.svc.cluster.local:port"
    service, namespace, port = m.group(1), m.group(2), int(m.group(3))
    assert namespace == overlay.namespace and service == "triton-headless"
    svc = overlay.get("Service", service)
    assert svc["spec"]["clusterIP"] == "None", "round-robin needs every pod's address: a headless Service"
    (target,) = [p["targetPort"] for p in svc["spec"]["ports"] if p["port"] == port]
    (triton,) = overlay.selected(svc["spec"]["selector"])
    assert triton["metadata"]["name"] == "triton" and container_port(triton, target) == port == 8001
    assert "--grpc-port" not in " ".join(container(triton, "triton")["args"]), "Triton serves gRPC on 8001"


def test_the_gateway_reaches_redis(overlay: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = gateway(overlay, tmp_path, monkeypatch).settings
    assert s.cluster.redis_url is not None
    url = s.cluster.redis_url.get_secret_value()
    if overlay.uses("managed-redis"):
        assert url == SECRET_VALUES[("stream-ml-redis", "url")]
        assert not overlay.has("StatefulSet", "redis") and not overlay.has("NetworkPolicy", "redis")
        return
    m = re.fullmatch(r"redis://:([^@]+)@([a-z0-9-]+):(\d+)/0", url)
    assert m and m.group(1) == SECRET_VALUES[("stream-ml-redis", "password")], "the password of stream-ml-redis"
    svc = overlay.get("Service", m.group(2))
    (target,) = [p["targetPort"] for p in svc["spec"]["ports"] if p["port"] == int(m.group(3))]
    (redis,) = overlay.selected(svc["spec"]["selector"])
    assert container_port(redis, target) == 6379
    args = container(redis, "redis")["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--appendonly") + 1] == "yes", "the stream registry lives in Redis: AOF on"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    expand(" ".join(args), resolve_env(container(redis, "redis"), overlay.namespace, "redis-0", overlay), "redis args")
    assert container(redis, "redis")["image"].startswith("redis:7.0.")


def test_ports_probes_and_grace_periods_agree_with_the_settings(
    overlay: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = gateway(overlay, tmp_path, monkeypatch)
    s, c, pod = gw.settings, gw.container, pod_spec(gw.workload)
    assert s.server.host == "0.0.0.0" and container_port(gw.workload, "http") == s.server.port == 8000
    assert "EXPOSE 8000" in (ROOT / "deploy" / "gateway" / "Dockerfile").read_text()
    # SIGTERM comes after the preStop sleep; uvicorn then waits graceful_shutdown_s, which outlasts a send
    assert s.ingest.send_timeout_s <= s.server.graceful_shutdown_s
    assert prestop_sleep(c) + s.server.graceful_shutdown_s < pod["terminationGracePeriodSeconds"]
    # uvicorn answers once start-up is over, which waits for Triton up to startup_timeout_s
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > s.triton.startup_timeout_s
    assert c["readinessProbe"]["timeoutSeconds"] > s.triton.health_timeout_s
    # the image's user, the capture root on a writable volume (the root filesystem is read-only)
    user = dict(dockerfile(ROOT / "deploy" / "gateway" / "Dockerfile"))["USER"]
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user
    assert s.capture.root in [m["mountPath"] for m in c["volumeMounts"]]
    # GPU overlays: Triton has a GPU and the gateway expects it; the CPU overlay says cpu
    triton = container(overlay.get("Deployment", "triton"), "triton")
    gpus = triton["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert (gpus, s.device) == ((1, "gpu") if overlay.gpu else (None, "cpu")), overlay.name


def test_gateway_probes_name_real_routes(overlay: Rendered) -> None:
    paths = create_app(Settings()).openapi()["paths"]
    sts = overlay.get("StatefulSet", "gateway")
    found = {kind: p["httpGet"]["path"] for kind, p in probes(container(sts, "gateway")).items()}
    assert found == {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/health/ready"}
    for path in found.values():
        assert "get" in paths.get(path, {}), f"{path} is not a gateway route"
    assert "get" in paths["/metrics"], "the ServiceMonitor scrapes /metrics"


def test_scaling_and_disruption_target_the_gateway(overlay: Rendered) -> None:
    sts = overlay.get("StatefulSet", "gateway")
    hpa = overlay.get("HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "gateway"}
    assert "replicas" not in sts["spec"], "the autoscaler owns the count; apply would reset it"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and "cpu" in container(sts, "gateway")["resources"]["requests"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    governing = overlay.get("Service", sts["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None" and overlay.selected(governing["spec"]["selector"]) == [sts]
    for name in ("gateway", "triton"):
        pdb = overlay.get("PodDisruptionBudget", name)
        (target,) = overlay.selected(pdb["spec"]["selector"]["matchLabels"])
        assert target["metadata"]["name"] == name, f"PDB {name} selects {target['metadata']['name']}"
    for spread in pod_spec(sts)["topologySpreadConstraints"]:
        assert overlay.selected(spread["labelSelector"]["matchLabels"]) == [sts]


# --- Triton ---------------------------------------------------------------------------------------


def test_triton_runs_as_compose_runs_it(overlay: Rendered) -> None:
    deployment = overlay.get("Deployment", "triton")
    c = container(deployment, "triton")
    env = resolve_env(c, overlay.namespace, "triton-0", overlay)
    args = [expand(a, env, f"{overlay.name}: triton args") for a in c["args"]]
    triton = compose()["services"]["triton"]
    assert c["image"] == triton["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    repository = env["MODEL_REPOSITORY"]
    assert args == [a.replace("=/models", f"={repository}", 1) for a in triton["command"]], (
        "the same flags as docker-compose.yml (explicit model control, the restricted model-repository API)"
    )
    if overlay.uses("triton-s3"):
        assert repository.startswith("s3://") and "/models" not in [m["mountPath"] for m in c["volumeMounts"]]
        assert not overlay.has("PersistentVolumeClaim", "triton-models")
    else:
        assert repository == "/models" and "/models" in [m["mountPath"] for m in c["volumeMounts"]]
    exit_timeout = next(int(a.split("=")[1]) for a in args if a.startswith("--exit-timeout-secs="))
    assert prestop_sleep(c) + exit_timeout < pod_spec(deployment)["terminationGracePeriodSeconds"]
    found = {kind: p["httpGet"] for kind, p in probes(c).items()}
    assert found["livenessProbe"]["path"] == "/v2/health/live"
    assert found["readinessProbe"]["path"] == "/v2/health/ready"
    assert {p["path"] for p in found.values()} <= TRITON_PATHS
    assert all(container_port(deployment, p["port"]) == 8000 for p in found.values()), "HTTP on 8000"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    shm = [v for v in pod_spec(deployment)["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
    assert [m["mountPath"] for m in c["volumeMounts"] if m["name"] == shm[0]["name"]] == ["/dev/shm"]
    assert pod_spec(deployment)["securityContext"]["runAsUser"] == 1000, "NGC's triton-server user"
    if overlay.gpu:
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1


# --- Services, policies, monitoring ---------------------------------------------------------------


def test_services_and_probes_reach_container_ports(overlay: Rendered) -> None:
    for svc in overlay.all("Service"):
        name = svc["metadata"]["name"]
        targets = overlay.selected(svc["spec"]["selector"])
        assert targets, f"{overlay.name}: Service {name} selects no pods"
        for workload in targets:
            for port in svc["spec"]["ports"]:
                assert container_port(workload, port["targetPort"]) is not None, (
                    f"Service {name} port {port['name']} -> {port['targetPort']}: no such port in "
                    f"{workload['metadata']['name']}"
                )
    for workload in overlay.workloads():
        for c in containers(workload, init=False):
            for kind, probe in probes(c).items():
                handler = probe.get("httpGet") or probe.get("tcpSocket")
                if handler:
                    assert container_port(workload, handler["port"]) is not None, f"{c['name']} {kind}"


def test_network_policies_admit_only_the_gateway(overlay: Rendered) -> None:
    sts = overlay.get("StatefulSet", "gateway")
    for policy in overlay.all("NetworkPolicy"):
        name = policy["metadata"]["name"]
        (target,) = overlay.selected(policy["spec"]["podSelector"]["matchLabels"])
        assert target["metadata"]["name"] == name, f"NetworkPolicy {name} selects {target['metadata']['name']}"
        for rule in policy["spec"].get("ingress", []):  # none: nothing may connect
            for port in rule["ports"]:
                assert container_port(target, port["port"]) is not None, f"{name}: {port['port']}"
            for peer in rule.get("from", []):
                if "podSelector" in peer:
                    assert overlay.selected(peer["podSelector"]["matchLabels"]), f"{name}: a peer matching nothing"
    # Triton's gRPC and Redis: from the gateway's pods only
    for name, port in (("triton", "grpc"), ("redis", "redis")):
        if not overlay.has("NetworkPolicy", name):
            continue
        ingress = overlay.get("NetworkPolicy", name)["spec"]["ingress"]
        rules = [r for r in ingress if port in [p["port"] for p in r["ports"]]]
        assert len(rules) == 1 and len(rules[0]["from"]) == 1, f"{name}: one rule, one peer for {port}"
        (peer,) = rules[0]["from"]
        assert set(peer) == {"podSelector"} and overlay.selected(peer["podSelector"]["matchLabels"]) == [sts], name
    assert overlay.has("NetworkPolicy", "redis") != overlay.uses("managed-redis")


def test_servicemonitors_scrape_one_service_each(rendered: dict[str, Rendered]) -> None:
    monitored = [o for o in rendered.values() if o.uses("servicemonitor")]
    assert monitored, "no overlay renders the ServiceMonitors"
    for overlay in monitored:
        monitors = overlay.all("ServiceMonitor")
        assert {m["metadata"]["name"] for m in monitors} == {"gateway", "triton"}
        for monitor in monitors:
            selector = monitor["spec"]["selector"]["matchLabels"]
            services = [s for s in overlay.all("Service") if selector.items() <= s["metadata"]["labels"].items()]
            assert [s["metadata"]["name"] for s in services] == [monitor["metadata"]["name"]], "one Service, one scrape"
            ports = {p["name"] for p in services[0]["spec"]["ports"]}
            assert all(e["port"] in ports and e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])


# --- security -------------------------------------------------------------------------------------


def test_every_pod_meets_the_restricted_pod_security_standard(overlay: Rendered) -> None:
    for workload in overlay.workloads():
        spec, name = pod_spec(workload), workload["metadata"]["name"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, f"{name} never calls the Kubernetes API"
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        assert not any("hostPath" in v for v in spec.get("volumes", [])), name
        for c in containers(workload):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert sc["readOnlyRootFilesystem"] is True and not sc.get("privileged"), c["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
            image = c["image"]
            assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), f"{c['name']}: {image}"
    if overlay.has("Job", "export-models"):
        user = dict(dockerfile(ROOT / "deploy" / "exporter" / "Dockerfile"))["USER"]
        job = pod_spec(overlay.get("Job", "export-models"))["securityContext"]
        assert f"{job['runAsUser']}:{job['runAsGroup']}" == user


def readme_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, from the README's `kubectl create secret generic` commands."""
    text = README.read_text().replace("\\\n", " ")
    out: dict[str, set[str]] = {}
    for m in re.finditer(r"create secret generic ([a-z0-9-]+)((?:\s+--from-(?:literal|file)=[^\s=]+=\S*)+)", text):
        out.setdefault(m.group(1), set()).update(re.findall(r"--from-(?:literal|file)=([^\s=]+)=", m.group(2)))
    return out


def test_secrets_are_documented(overlay: Rendered) -> None:
    documented = readme_secrets()
    referenced: dict[str, set[str]] = {}
    for workload in overlay.workloads():
        for c in containers(workload):
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.setdefault(ref["name"], set()).add(ref["key"])
            for source in c.get("envFrom", []):
                referenced.setdefault(source["secretRef"]["name"], set())
        for volume in pod_spec(workload).get("volumes", []):
            if "secret" in volume:
                referenced.setdefault(volume["secret"]["secretName"], set())
    for name, keys in referenced.items():
        assert name in documented, f"{overlay.name} reads the Secret {name}: README.md must say how to create it"
        assert keys <= documented[name], f"Secret {name}: README.md's commands lack the keys {keys - documented[name]}"
    assert documented["stream-ml-gateway"] == set(SECRET_FILES), "the gateway's secret files the tests load"
    for name, key in SECRET_VALUES:
        assert key in documented[name]


def test_the_readme_covers_every_overlay_and_the_sizing() -> None:
    text = README.read_text()
    for name in OVERLAYS:
        assert f"kubectl apply -k deploy/k8s/overlays/{name}" in text, name
    for cameras in ("100", "1,000", "10,000"):
        assert f"| {cameras} " in text, f"the sizing table lacks {cameras} cameras"
    assert "measured" in text and "derived" in text
