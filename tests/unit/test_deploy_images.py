"""The gateway and exporter images, checked without Docker: hadolint, and that each installs
exactly its lock file, whose pins satisfy pyproject.toml and equal what the tests run with.
(tests/integration/test_deploy_smoke.py starts the gateway from an environment holding only
the gateway's lock, as the image does.)"""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from harness.deploy import dockerfile, exec_form, lock_pins
from harness.helpers import PYTHON, ROOT

HADOLINT = str(Path(PYTHON).with_name("hadolint"))
GATEWAY = ROOT / "deploy" / "gateway" / "Dockerfile"
EXPORTER = ROOT / "deploy" / "exporter" / "Dockerfile"
GATEWAY_LOCK = ROOT / "requirements" / "gateway.lock"
EXPORTER_LOCK = ROOT / "requirements" / "exporter.lock"
NGC_PYTHON = ROOT / ".venv-ngc" / "bin" / "python"


def extra(name: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["optional-dependencies"][name]]


@pytest.mark.parametrize("path", [GATEWAY, EXPORTER], ids=["gateway", "exporter"])
def test_hadolint_finds_nothing(path: Path) -> None:
    done = subprocess.run([HADOLINT, str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("path", "lock", "name"), [(GATEWAY, GATEWAY_LOCK, "gateway"), (EXPORTER, EXPORTER_LOCK, "export-ngc")]
)
def test_each_image_installs_its_lock_which_satisfies_pyproject(path: Path, lock: Path, name: str) -> None:
    steps = dockerfile(path)
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert f"pip install --require-hashes --no-deps -r /tmp/{lock.name}" in runs
    assert f"COPY requirements/{lock.name} /tmp/{lock.name}" in [f"{op} {args}" for op, args in steps]
    pins = lock_pins(lock)
    for req in extra(name):
        key = req.name.lower().replace("_", "-")
        assert key in pins, f"{lock.name} does not pin {req.name}"
        assert Version(pins[key]) in req.specifier, f"{lock.name}: {req.name}=={pins[key]} is not {req.specifier}"
    hashes = lock.read_text().count("--hash=sha256:")
    assert hashes >= len(pins), "every pin carries its hashes"


def test_the_gateway_image_holds_no_torch() -> None:
    pins = lock_pins(GATEWAY_LOCK)
    assert not {"torch", "torchvision", "onnxruntime", "onnx"} & set(pins), "the gateway's runtime never runs a model"
    steps = dockerfile(GATEWAY)
    copies = [args for op, args in steps if op == "COPY" and "--from" not in args]
    assert copies == ["requirements/gateway.lock /tmp/gateway.lock", "gateway/ /app/gateway/"]


def test_the_environments_here_run_the_locked_versions() -> None:
    # the Makefile installs the locks' pins as constraints: the tests run what the images ship
    differ = {}
    for name, version in lock_pins(GATEWAY_LOCK).items():
        installed = md.version(name)
        if installed != version:
            differ[name] = (version, installed)
    assert not differ, f".venv differs from requirements/gateway.lock: {differ}"
    code = "import importlib.metadata as md, json, sys; print(json.dumps({n: md.version(n) for n in sys.argv[1:]}))"
    pins = lock_pins(EXPORTER_LOCK)
    done = subprocess.run([str(NGC_PYTHON), "-c", code, *pins], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    installed = json.loads(done.stdout)
    assert {k: v for k, v in installed.items() if v != pins[k]} == {}, ".venv-ngc differs from exporter.lock"
    assert pins["torch"] == "2.5.1" and pins["torchvision"] == "0.20.1", "LibTorch 2.5 is NGC 24.10's"


@pytest.mark.parametrize("path", [GATEWAY, EXPORTER], ids=["gateway", "exporter"])
def test_images_run_as_an_unprivileged_user(path: Path) -> None:
    steps = dockerfile(path)
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1].split(":")[0].isdecimal() and int(users[-1].split(":")[0]) >= 1000
    froms = [args for op, args in steps if op == "FROM"]
    assert froms == ["python:3.11-slim-bookworm AS build", "python:3.11-slim-bookworm"], "multi-stage, slim"


def test_the_gateway_image_starts_the_gateway_and_checks_its_liveness() -> None:
    steps = dict((op, args) for op, args in dockerfile(GATEWAY) if op in ("ENTRYPOINT", "HEALTHCHECK", "EXPOSE"))
    assert exec_form(steps["ENTRYPOINT"]) == ["python", "-m", "gateway"]
    assert exec_form(steps["HEALTHCHECK"]) == ["python", "-m", "gateway.healthcheck", "/health"]
    assert steps["EXPOSE"] == "8000"
    env = " ".join(args for op, args in dockerfile(GATEWAY) if op == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "APP_CAPTURE__ROOT=/var/lib/stream-ml/captures" in env


def test_the_build_context_holds_what_the_images_copy() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][:4] == ["*", "!requirements/", "!gateway/", "!export/"]
    for path in (GATEWAY, EXPORTER):
        for op, args in dockerfile(path):
            if op == "COPY" and "--from" not in args:
                source = args.split()[0]
                assert source.split("/")[0] in ("requirements", "gateway", "export"), source
                assert (ROOT / source).exists(), source


def test_every_committed_config_parses_with_tritons_protobufs_for_the_gpu_target() -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    expected = {"mobilenet_v3_small": "onnxruntime_onnx", "person_detector": "pytorch_libtorch"}
    found = {}
    for path in sorted((ROOT / "model_repository").glob("*/config.pbtxt")):
        cfg = text_format.Parse(path.read_text(), mc.ModelConfig())  # raises on any unknown field
        found[cfg.name] = cfg.platform
        assert cfg.name == path.parent.name
        assert [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group] == ["KIND_GPU"], cfg.name
        assert cfg.dynamic_batching.preferred_batch_size, f"{cfg.name}: Triton batches streams together"
        assert cfg.max_batch_size >= 8
    assert found == expected
    # the exporter image's check accepts exactly these backends
    from export.prepare import TARGET_BACKENDS

    assert set(expected.values()) <= TARGET_BACKENDS
