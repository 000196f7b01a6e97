"""docker-compose.yml, checked without Docker: the Compose Specification's schema, then every
cross-reference a wrong value would break at the first `docker compose up` on a GPU host."""

from __future__ import annotations

import json
import re
import subprocess
from ipaddress import ip_address
from pathlib import Path

import pytest
import yaml

from gateway.config import Settings, StreamConfig, load_settings
from gateway.main import create_app
from gateway.streams.policy import refusal
from harness.deploy import (
    COMPOSE,
    ENV_EXAMPLE,
    TEST_API_KEY,
    compose,
    env_example,
    interpolate,
    seconds,
    service_env,
    settings_paths,
    variables,
)
from harness.helpers import PYTHON, ROOT

CHECK_JSONSCHEMA = str(Path(PYTHON).with_name("check-jsonschema"))
SPECIAL = {"APP_CONFIG", "APP_SECRETS_DIR"}  # read by gateway/config.py itself, not settings


@pytest.fixture(scope="module")
def doc() -> dict:  # type: ignore[type-arg]
    return compose()


def gateway_settings(monkeypatch: pytest.MonkeyPatch, doc: dict) -> Settings:  # type: ignore[type-arg]
    """The settings the gateway container starts with: its YAML, environment and secrets."""
    for key in [k for k in __import__("os").environ if k.startswith("APP_")]:
        monkeypatch.delenv(key)
    env = service_env(doc["services"]["gateway"])
    env["APP_CONFIG"] = str(ROOT / "deploy" / "gateway" / "config.yaml")
    env["APP_SECRETS_DIR"] = str(ROOT / "nonexistent")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load_settings()


def test_it_follows_the_compose_specification() -> None:
    done = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_app_variable_is_a_real_setting(doc: dict) -> None:  # type: ignore[type-arg]
    known = settings_paths()
    for name, service in doc["services"].items():
        for key in service_env(service):
            if key.startswith("APP_") and key not in SPECIAL:
                path = key.removeprefix("APP_").lower().replace("__", ".")
                assert path in known, f"{name}: {key} is not a setting ({path})"


def test_the_gateway_starts_with_the_settings_compose_gives_it(
    doc: dict,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = gateway_settings(monkeypatch, doc)
    gw = doc["services"]["gateway"]
    # ports agree: the container port published, the one the gateway listens on, the image's EXPOSE
    published = [p.rsplit(":", 1)[1] for p in gw["ports"]]
    assert published == [str(s.server.port)] == ["8000"]
    assert "EXPOSE 8000" in (ROOT / "deploy" / "gateway" / "Dockerfile").read_text()
    assert s.server.host == "0.0.0.0", "a container listens on every interface"
    # Triton: the gateway dials the port Triton serves gRPC on, by its service name
    host, port = s.triton.url.rsplit(":", 1)
    assert host == "triton" and port in [p.split(":")[-1] for p in doc["services"]["triton"]["ports"]]
    # grace periods: a send times out before uvicorn gives up, and uvicorn before compose kills
    assert s.ingest.send_timeout_s <= s.server.graceful_shutdown_s < seconds(gw["stop_grace_period"])
    assert s.capture.root == "/var/lib/stream-ml/captures" and "captures:/var/lib/stream-ml/captures" in gw["volumes"]
    assert s.device == "gpu"


def test_triton_is_locked_down(doc: dict) -> None:  # type: ignore[type-arg]
    triton = doc["services"]["triton"]
    command = triton["command"]
    assert "--model-control-mode=explicit" in command
    restricted = [c for c in command if c.startswith(("--http-restricted-api=", "--grpc-restricted-protocol="))]
    assert len(restricted) == 2 and all(":triton-admin-key=test-admin-key" in c for c in restricted)
    assert all("model-repository" in c.split("=", 1)[1].split(":")[0] for c in restricted)
    assert all(p.startswith("127.0.0.1:") for p in triton["ports"]), "loopback unless TRITON_BIND opts in"
    assert "--strict-model-config=true" not in command and "--disable-auto-complete-config" in command
    exit_timeout = next(int(c.split("=")[1]) for c in command if c.startswith("--exit-timeout-secs="))
    assert exit_timeout < seconds(triton["stop_grace_period"])
    assert triton["volumes"] == ["./model_repository:/models:ro"]
    gpu = triton["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert triton["healthcheck"]["test"][-1].endswith("/v2/health/ready")
    assert "--model-repository=/models" in command


def test_the_required_admin_key_cannot_be_forgotten() -> None:
    with pytest.raises(ValueError, match="TRITON_ADMIN_KEY"):
        interpolate(COMPOSE.read_text(), {})


def test_start_order_and_restarts(doc: dict) -> None:  # type: ignore[type-arg]
    s = doc["services"]
    assert s["gateway"]["depends_on"] == {
        "exporter": {"condition": "service_completed_successfully"},
        "triton": {"condition": "service_healthy"},
    }
    assert s["triton"]["depends_on"]["exporter"]["condition"] == "service_completed_successfully"
    assert s["exporter"]["restart"] == "no"
    for name in ("triton", "gateway"):
        assert s[name]["restart"] == "unless-stopped" and "healthcheck" in s[name] and "stop_grace_period" in s[name]


def test_healthchecks_name_real_endpoints(doc: dict) -> None:  # type: ignore[type-arg]
    test = doc["services"]["gateway"]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "gateway.healthcheck"]
    paths = create_app(Settings()).openapi()["paths"]
    assert "get" in paths.get(test[4], {}), f"{test[4]} is not a gateway route"
    assert (ROOT / "gateway" / "healthcheck.py").is_file()


def test_every_mounted_path_exists(doc: dict) -> None:  # type: ignore[type-arg]
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which the repository lacks"
    for name, secret in doc["secrets"].items():
        assert (ROOT / secret["file"]).is_file(), f"secret {name}: {secret['file']}"
    streams = json.loads((ROOT / "deploy" / "streams.json").read_text())
    assert [StreamConfig(**s) for s in streams] == []


def test_the_env_example_names_every_variable_compose_uses() -> None:
    used = variables(COMPOSE.read_text())
    documented = set(env_example())
    assert used <= documented, f".env.example lacks {sorted(used - documented)}"
    assert documented <= used, f".env.example names what compose never reads: {sorted(documented - used)}"
    assert env_example()["TRITON_IMAGE"] == "nvcr.io/nvidia/tritonserver:24.10-py3"


def test_images_are_pinned_and_match_the_embedded_triton(doc: dict) -> None:  # type: ignore[type-arg]
    for name, service in doc["services"].items():
        image = service["image"]
        assert not image.endswith((":latest", ":latest-ffmpeg")) and ":" in image, f"{name}: {image}"
    # the embedded Triton the tests run is the same release: tritonserver 2.51 = NGC 24.10
    assert doc["services"]["triton"]["image"].endswith(":24.10-py3")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"nvidia-pytriton==0.7.0"' in pyproject, "pytriton 0.7.0 ships tritonserver 2.51 (NGC 24.10)"


def test_prometheus_scrapes_the_ports_the_services_serve(doc: dict) -> None:  # type: ignore[type-arg]
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in prom["scrape_configs"]}
    assert targets == {"gateway": ["gateway:8000"], "triton": ["triton:8002"]}
    triton_ports = [p.split(":")[-1] for p in doc["services"]["triton"]["ports"]]
    assert "8002" in triton_ports


def test_the_grafana_dashboard_is_provisioned() -> None:
    dash = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "stream-ml.json").read_text())
    provider = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "stream-ml.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("latency", "frame age", "fps", "queue", "batch", "errors"):
        assert topic in titles, f"the dashboard lacks a {topic} panel"
    assert all(t["expr"] for p in dash["panels"] for t in p["targets"])


def test_demo_profile_adds_a_stream_the_policy_allows(doc: dict, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    s = gateway_settings(monkeypatch, doc)
    body = json.loads(doc["services"]["demo-stream"]["command"][-1])
    url = body["url"]
    host = re.match(r"rtsp://([^:/]+)", url)
    assert host and host.group(1) in s.stream_policy.allowed_hosts and host.group(1) == "camera"
    # the address compose's DNS gives the camera (Docker's default pools) is reachable; loopback is not
    for compose_address in ("172.18.0.4", "172.31.0.2", "192.168.16.3"):
        assert refusal([ip_address(compose_address)], s.stream_policy.allowed_networks) is None, compose_address
    assert refusal([ip_address("127.0.0.1")], s.stream_policy.allowed_networks) is not None
    assert refusal([ip_address("169.254.169.254")], s.stream_policy.allowed_networks) is not None
    assert doc["services"]["camera"]["profiles"] == ["demo"]
    mediamtx = yaml.safe_load((ROOT / "deploy" / "demo" / "mediamtx.yml").read_text())
    assert url.endswith("/" + next(iter(mediamtx["paths"]))) and ":8554/" in url
    assert ENV_EXAMPLE.is_file()


def test_compose_security_a_scanner_would_ask_for(doc: dict) -> None:  # type: ignore[type-arg]
    # checkov has no compose framework: the properties it checks on containers, asserted here
    for name, service in doc["services"].items():
        assert not service.get("privileged"), f"{name} is privileged"
        assert service.get("network_mode") != "host", f"{name} shares the host's network"
        assert not any("docker.sock" in v for v in service.get("volumes", [])), f"{name} mounts the Docker socket"
        assert "SYS_ADMIN" not in service.get("cap_add", []), name
        for port in service.get("ports", []):
            host_ip = port.split(":")[0]
            if name != "gateway":
                assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback by default"
    gateway = doc["services"]["gateway"]
    assert gateway["read_only"] is True and gateway["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in gateway["security_opt"]
    assert all(v.endswith(":ro") or not v.startswith("./") for v in gateway["volumes"]), "config mounted read-only"


def test_authentication_is_on_and_its_key_cannot_be_forgotten(doc: dict, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    # given compose's settings, then the gateway demands the key .env gives it
    s = gateway_settings(monkeypatch, doc)
    assert s.auth.enabled and [k.get_secret_value() for k in s.auth.api_keys] == [TEST_API_KEY]
    assert "*" not in s.cors_origins and not s.cors_allow_credentials
    # and compose refuses to start without one (an empty value too), as it does without the admin key
    for missing in ({}, {"GATEWAY_API_KEY": ""}):
        with pytest.raises(ValueError, match="GATEWAY_API_KEY"):
            interpolate(COMPOSE.read_text(), {"TRITON_ADMIN_KEY": "k", **missing})
    assert env_example()["GATEWAY_API_KEY"] == "", "the example holds no key anyone could reuse"
    # and the demo profile's POST /streams sends it
    command = doc["services"]["demo-stream"]["command"]
    assert command[command.index(f"X-API-Key: {TEST_API_KEY}") - 1] == "-H", command
