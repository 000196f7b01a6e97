"""docker-compose.yml run without Docker, as far as this machine allows.

- Triton: the embedded tritonserver 2.51 (the server of NGC 24.10) started with the flags the
  compose file gives Triton: they are accepted, the model-repository API refuses a call without
  the admin key and takes one with it, and the healthcheck's endpoint answers.
- The gateway: its image's environment (build/gateway-image: requirements/gateway.lock only, no
  torch), the code the Dockerfile copies, the image's ENTRYPOINT, and exactly the environment,
  YAML and secret compose gives it; rewritten: the Triton address (to the embedded server) and
  the listening address and port (loopback, a free port: this is a shared test machine).  Then
  the compose healthcheck's command must pass, and the Grafana dashboard's queries must name
  metrics that the gateway and Triton really export.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embedded_triton import EmbeddedTriton, TritonPorts
from harness.deploy import compose, dockerfile, env_example, exec_form, service_env
from harness.helpers import ROOT, TRITON_VENV, GatewayProcess, api_key, free_port, stream_info, wait_until
from harness.peers.clips import write_clip

pytestmark = pytest.mark.integration
IMAGE_PYTHON = ROOT / "build" / "gateway-image" / "bin" / "python"
ADMIN_KEY = "smoke-test-admin-key"
API_KEY = "smoke-test-gateway-api-key"  # .env's GATEWAY_API_KEY: compose turns authentication on
KEYS = {"TRITON_ADMIN_KEY": ADMIN_KEY, "GATEWAY_API_KEY": API_KEY}


@pytest.fixture(scope="module")
def doc() -> dict:  # type: ignore[type-arg]
    return compose({**env_example(), **KEYS})


@pytest.fixture(scope="module")
def compose_triton(
    exported_repo: Path,
    tmp_path_factory: pytest.TempPathFactory,
    doc: dict,  # type: ignore[type-arg]
) -> Iterator[EmbeddedTriton]:
    """The embedded Triton with compose's own restrictions and exit timeout."""
    command = doc["services"]["triton"]["command"]
    taken = ("--http-restricted-api=", "--grpc-restricted-protocol=", "--exit-timeout-secs=")
    flags = tuple(c for c in command if c.startswith(taken))
    assert len(flags) == 3, command
    server = EmbeddedTriton(
        model_repository=exported_repo,
        work_dir=tmp_path_factory.mktemp("compose-triton"),
        venv=TRITON_VENV,
        ports=TritonPorts(grpc=free_port(), http=free_port(), metrics=free_port()),
        extra_args=flags,
        admin_header=("triton-admin-key", ADMIN_KEY),
        watch_s=0,
    )
    with server:
        yield server


def post(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=b"", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_tritons_compose_flags_work_and_lock_the_model_api(compose_triton: EmbeddedTriton) -> None:
    url = f"{compose_triton.http_url}/v2/repository/models/mobilenet_v3_small/load"
    assert post(url) == 403, "load without the admin key must be refused"
    assert post(url, {"triton-admin-key": "wrong"}) == 403
    assert post(url, {"triton-admin-key": ADMIN_KEY}) == 200
    # the compose healthcheck's endpoint, on Triton's HTTP port (8000 in the container)
    assert httpx.get(f"{compose_triton.http_url}/v2/health/ready").status_code == 200
    # inference stays open to the gateway
    assert httpx.get(f"{compose_triton.http_url}/v2/models/mobilenet_v3_small/ready").status_code == 200


@pytest.fixture(scope="module")
def compose_gateway(
    compose_triton: EmbeddedTriton,
    tmp_path_factory: pytest.TempPathFactory,
    doc: dict,  # type: ignore[type-arg]
) -> Iterator[tuple[GatewayProcess, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("compose-gateway")
    # the image: its environment and the code its Dockerfile copies
    assert IMAGE_PYTHON.is_file(), "make deploy-tools builds build/gateway-image from requirements/gateway.lock"
    app = tmp / "app"
    shutil.copytree(ROOT / "gateway", app / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    steps = dockerfile(ROOT / "deploy" / "gateway" / "Dockerfile")
    image_env = dict(kv.split("=", 1) for op, args in steps if op == "ENV" for kv in args.split())
    entrypoint = exec_form(next(args for op, args in steps if op == "ENTRYPOINT"))
    # compose: the service's environment, its YAML (the mount's source) and its secret
    gateway = doc["services"]["gateway"]
    env = {**image_env, **service_env(gateway)}
    mounts = dict(reversed(v.split(":")[:2]) for v in gateway["volumes"] if v.startswith("./"))
    env["APP_CONFIG"] = str(ROOT / mounts[env["APP_CONFIG"]])
    secrets = tmp / "secrets"
    secrets.mkdir()
    clip = write_clip(tmp / "lobby.mp4", seconds=1.0)  # a camera, as a user puts one in the secret
    (secrets / "app_streams").write_text(json.dumps([{"id": "lobby", "url": str(clip), "loop": True}]))
    env["APP_SECRETS_DIR"] = str(secrets)
    # rewritten for this machine
    env["APP_TRITON__URL"] = compose_triton.grpc_url
    env["APP_SERVER__HOST"] = "127.0.0.1"
    env["PATH"] = f"{IMAGE_PYTHON.parent}:/usr/bin:/bin"
    gw = GatewayProcess(env, tmp / "gateway.log")
    env["APP_SERVER__PORT"] = str(gw.port)
    gw.command = [str(IMAGE_PYTHON), *entrypoint[1:]]
    gw.cwd = app
    gw.env = env  # exactly this environment: nothing from the test process leaks in
    try:
        gw.start(timeout=120, ready_path="/health/ready")
        yield gw, env
    finally:
        gw.stop()


def test_the_gateway_runs_as_compose_starts_it(compose_gateway: tuple[GatewayProcess, dict[str, str]]) -> None:
    gw, env = compose_gateway
    assert gw.proc is not None and gw.command is not None and gw.command[0] == str(IMAGE_PYTHON)
    # the compose healthcheck's command, in the gateway's environment
    test = compose({**env_example(), **KEYS})["services"]["gateway"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    done = subprocess.run(
        [str(IMAGE_PYTHON), *test[2:]], env=env, cwd=gw.cwd, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    # the image's environment holds no torch
    no_torch = subprocess.run([str(IMAGE_PYTHON), "-c", "import torch"], capture_output=True, timeout=30, check=False)
    assert no_torch.returncode != 0
    # readiness: Triton and the model ready; the gpu setting is reported against the CPU instances here
    ready = httpx.get(f"{gw.url}/health/ready").json()
    model = ready["components"]["models"]["mobilenet_v3_small"]
    assert ready["ready"] is True and "device is gpu" in model["warning"]
    # the camera from the app_streams secret runs, and the demo camera's host is allowed: the policy
    # goes on to resolve it, which only compose's network can (the address it gets there is within
    # stream_policy.allowed_networks: tests/unit/test_deploy_compose.py)
    wait_until(lambda: stream_info(gw, "lobby", key=API_KEY)["predictions"] >= 2, 30, what="the secret's camera")
    # (authentication is on: the stream routes demand the key, and the demo's POST sends it)
    assert httpx.get(f"{gw.url}/streams").status_code == 401
    r = httpx.post(
        f"{gw.url}/streams", json={"id": "demo", "url": "rtsp://camera:8554/demo"}, headers=api_key(API_KEY), timeout=10
    )
    assert r.status_code == 400 and "'camera'" in r.text and "resolve" in r.json()["error"]["message"], r.text
    # and the healthcheck fails where no gateway answers
    nobody = {**env, "APP_SERVER__PORT": str(free_port())}
    done = subprocess.run(
        [str(IMAGE_PYTHON), *test[2:]], env=nobody, cwd=gw.cwd, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1


def metric_names(text: str) -> set[str]:
    """Every name a PromQL query can select, from the exposition text as Prometheus reads it:
    sample names, and the families declared without samples yet (a labelled counter before
    its first increment) with the suffixes their type gives them."""
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.MULTILINE))
    suffixes = {"counter": ("", "_total"), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)", text, re.MULTILINE):
        names |= {family + suffix for suffix in suffixes.get(kind, ("",))}
    return names


def test_the_dashboard_queries_metrics_that_exist(
    compose_gateway: tuple[GatewayProcess, dict[str, str]], compose_triton: EmbeddedTriton
) -> None:
    gw, _ = compose_gateway
    wait_until(lambda: stream_info(gw, "lobby", key=API_KEY)["predictions"] >= 2, 30, what="predictions")
    httpx.post(f"{gw.url}/predict", content=b"not an image", headers={"content-type": "image/jpeg", **api_key(API_KEY)})
    exported = metric_names(httpx.get(f"{gw.url}/metrics").text) | metric_names(
        httpx.get(compose_triton.metrics_url).text
    )
    dash = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "stream-ml.json").read_text())
    queried = {
        name
        for panel in dash["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b((?:streamml|nv)_[a-z0-9_]+)", target["expr"])
    }
    gpu_only = {n for n in queried if n.startswith("nv_gpu_")}  # exported by Triton on GPU hosts only
    missing = sorted(queried - exported - gpu_only)
    assert not missing, f"the dashboard queries metrics nobody exports: {missing}"
    assert len(queried - gpu_only) >= 10
