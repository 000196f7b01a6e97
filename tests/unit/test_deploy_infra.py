"""infra/ (Terraform for AWS), checked without AWS: parsed with python-hcl2 for the security
expectations and every cross-reference to the gateway, scanned with checkov, formatted.
(`terraform init` cannot reach the provider registry here: `validate` runs in the GitHub workflow.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway.config import Settings, load_settings
from gateway.metrics import EmfWindow
from harness.deploy import INFRA, compose, terraform
from harness.helpers import ROOT

CHECKOV = ROOT / ".venv-deploy" / "bin" / "checkov"


@pytest.fixture(scope="module")
def tf() -> dict[str, dict[str, dict[str, Any]]]:
    return terraform()


@pytest.fixture(scope="module")
def bucket_module() -> dict[str, dict[str, dict[str, Any]]]:
    return terraform(INFRA / "modules" / "private_bucket")


def task(tf: dict, name: str) -> str:  # type: ignore[type-arg]
    return str(tf["resource"]["aws_ecs_task_definition"][name]["container_definitions"])


def gateway_env(tf: dict) -> dict[str, str]:  # type: ignore[type-arg]
    pairs = re.findall(r'\{name = "(APP_[A-Z0-9_]+)", value = ("(?:[^"\\]|\\.)*"|[^,}]+)\}', task(tf, "gateway"))
    return {k: v.strip() for k, v in pairs}


def test_every_bucket_is_private_encrypted_and_versioned(tf: dict, bucket_module: dict) -> None:  # type: ignore[type-arg]
    res = bucket_module["resource"]
    pab = res["aws_s3_bucket_public_access_block"]["this"]
    assert all(
        pab[k] is True
        for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    )
    sse = res["aws_s3_bucket_server_side_encryption_configuration"]["this"]["rule"][0]
    default = sse["apply_server_side_encryption_by_default"][0]
    assert default["sse_algorithm"] == "aws:kms" and default["kms_master_key_id"] == "${var.kms_key_arn}"
    assert res["aws_s3_bucket_versioning"]["this"]["versioning_configuration"][0]["status"] == "Enabled"
    assert res["aws_s3_bucket_ownership_controls"]["this"]["rule"][0]["object_ownership"] == "BucketOwnerEnforced"
    assert "aws:SecureTransport" in str(bucket_module["data"]["aws_iam_policy_document"]["tls_only"])
    # the capture bucket expires what it holds; both use the module and the customer-managed key
    modules = tf["module"]
    assert set(modules) == {"models_bucket", "captures_bucket"}
    assert all(
        m["source"] == "./modules/private_bucket" and "aws_kms_key.main" in m["kms_key_arn"] for m in modules.values()
    )
    assert modules["captures_bucket"]["expire_days"] == "${var.capture_retention_days}"
    assert tf["resource"]["aws_kms_key"]["main"]["enable_key_rotation"] is True
    # the load balancer's log bucket: SSE-S3 (the only encryption ALB log delivery supports), no public access
    logs = tf["resource"]
    assert (
        logs["aws_s3_bucket_server_side_encryption_configuration"]["alb_logs"]["rule"][0][
            "apply_server_side_encryption_by_default"
        ][0]["sse_algorithm"]
        == "AES256"
    )
    assert all(v is True for k, v in logs["aws_s3_bucket_public_access_block"]["alb_logs"].items() if k != "bucket")
    expected = {"bucket"} | {
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    }
    assert set(logs["aws_s3_bucket_public_access_block"]["alb_logs"]) == expected


def test_no_open_ingress_to_the_gateway_or_triton(tf: dict) -> None:  # type: ignore[type-arg]
    ingress = tf["resource"]["aws_vpc_security_group_ingress_rule"]
    for name, rule in ingress.items():
        target = rule["security_group_id"]
        if "aws_security_group.gateway" in target or "aws_security_group.triton" in target:
            assert "cidr_ipv4" not in rule and "cidr_ipv6" not in rule, f"{name}: ingress from an address range"
    assert ingress["gateway_from_alb"]["referenced_security_group_id"] == "${aws_security_group.alb.id}"
    assert ingress["triton_from_gateway"]["referenced_security_group_id"] == "${aws_security_group.gateway.id}"
    assert {n for n, r in ingress.items() if "aws_security_group.triton" in r["security_group_id"]} == {
        "triton_from_gateway"
    }, "only the gateway reaches Triton"
    assert not any("gpu_hosts" in r["security_group_id"] for r in ingress.values()), "GPU hosts take no ingress"
    assert "default" not in tf["variable"]["alb_ingress_cidrs"], "who reaches the load balancer is a choice"
    assert not [g for g in tf["resource"]["aws_security_group"].values() if "ingress" in g], "no inline rules"


def test_iam_is_scoped_to_prefixes(tf: dict) -> None:  # type: ignore[type-arg]
    docs = tf["data"]["aws_iam_policy_document"]
    gateway = docs["gateway"]["statement"]
    put = next(s for s in gateway if s["actions"] == ["s3:PutObject"])
    assert put["resources"] == ["${module.captures_bucket.arn}/${var.capture_prefix}*"]
    triton = {s["sid"]: s for s in docs["triton"]["statement"]}
    assert triton["ReadTheRepository"]["actions"] == ["s3:GetObject"]
    assert triton["ReadTheRepository"]["resources"] == ["${module.models_bucket.arn}/${var.model_repository_prefix}*"]
    listing = triton["ListTheRepository"]
    assert listing["condition"][0]["variable"] == "s3:prefix"
    assert listing["condition"][0]["values"] == ["${var.model_repository_prefix}*"]
    for name in ("gateway", "triton", "execution_secrets"):
        for statement in docs[name]["statement"]:
            assert "*" not in statement["resources"], f"{name}: a statement on every resource"
            assert not any(a.endswith(":*") or a == "*" for a in statement["actions"]), f"{name}: a wildcard action"


def test_the_load_balancer_keeps_event_streams_open(tf: dict) -> None:  # type: ignore[type-arg]
    lb = tf["resource"]["aws_lb"]["main"]
    assert lb["idle_timeout"] == "${var.alb_idle_timeout_s}" and tf["variable"]["alb_idle_timeout_s"]["default"] >= 120
    assert "var.alb_idle_timeout_s >= 120" in tf["variable"]["alb_idle_timeout_s"]["validation"][0]["condition"]
    assert lb["drop_invalid_header_fields"] is True
    tg = tf["resource"]["aws_lb_target_group"]["gateway"]
    assert tg["health_check"][0]["path"] == "/health/ready" and tg["port"] == 8000
    https = tf["resource"]["aws_lb_listener"]["https"]
    assert https["protocol"] == "HTTPS" and https["certificate_arn"] == "${var.certificate_arn}"
    assert "TLS13" in https["ssl_policy"]
    # keep-alives, sends and shutdown fit inside each other and inside the load balancer's idle timeout
    local = tf["locals"]
    assert local["keepalive_s"] < 120 and local["send_timeout_s"] <= local["graceful_s"] < local["stop_timeout_s"]
    assert tg["deregistration_delay"] >= local["graceful_s"]


def test_unauthenticated_internals_are_not_public(tf: dict) -> None:  # type: ignore[type-arg]
    # /metrics and /health/stream need no key (Prometheus, probes): the public listener refuses them
    rule = tf["resource"]["aws_lb_listener_rule"]["private_paths"]
    assert rule["listener_arn"] == "${aws_lb_listener.https.arn}"
    assert (
        rule["action"][0]["type"] == "fixed-response" and rule["action"][0]["fixed_response"][0]["status_code"] == "404"
    )
    paths = rule["condition"][0]["path_pattern"][0]["values"]
    assert set(paths) == {"/metrics", "/health/stream"}
    tg = tf["resource"]["aws_lb_target_group"]["gateway"]
    assert tg["health_check"][0]["path"] not in paths, "the target group's own health check must still pass"


def test_triton_gets_a_gpu_and_the_same_lock_down_as_compose(tf: dict) -> None:  # type: ignore[type-arg]
    triton = task(tf, "triton")
    assert re.search(r'resourceRequirements = \[\{type = "GPU", value = "1"\}\]', triton)
    assert tf["resource"]["aws_ecs_task_definition"]["triton"]["requires_compatibilities"] == ["EC2"]
    assert "ECS_ENABLE_GPU_SUPPORT=true" in tf["resource"]["aws_launch_template"]["gpu"]["user_data"]
    assert "gpu/recommended/image_id" in tf["data"]["aws_ssm_parameter"]["ecs_gpu_ami"]["name"]
    provider = tf["resource"]["aws_ecs_capacity_provider"]["gpu"]["auto_scaling_group_provider"][0]
    assert provider["managed_scaling"][0]["status"] == "ENABLED"
    # the same flags as docker-compose.yml gives Triton
    flags = [c for c in compose()["services"]["triton"]["command"] if c.startswith("--")]
    for flag in flags:
        if flag.startswith(("--http-restricted-api", "--grpc-restricted-protocol")):
            assert flag.split("=")[0] + "=model-repository:${local.admin_header}=" in triton, flag
            assert tf["locals"]["admin_header"] == "triton-admin-key"
        elif flag != "--model-repository=/models":
            assert flag in triton, f"compose gives Triton {flag}; ECS does not"
    assert "--model-repository=s3://${module.models_bucket.bucket}/" in triton
    assert "/v2/health/ready" in triton


def test_the_gateway_task_gets_real_settings(tf: dict, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    env = gateway_env(tf)
    known = set()

    def walk(model: type[BaseModel], prefix: str = "") -> None:
        for name, info in model.model_fields.items():
            known.add(prefix + name)
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation, f"{prefix}{name}.")

    walk(Settings)
    for key in env:
        assert key.removeprefix("APP_").lower().replace("__", ".") in known, f"{key} is not a setting"
    secrets = re.findall(r'\{name = "(APP_[A-Z_]+)", valueFrom', task(tf, "gateway"))
    assert secrets == ["APP_STREAMS", "APP_AUTH__API_KEYS"], "the cameras and the API keys come from Secrets Manager"
    # the literal values, as the gateway would parse them
    literal = {k: v.strip('"') for k, v in env.items() if v.startswith('"') and "${" not in v}
    for key in [k for k in __import__("os").environ if k.startswith("APP_")]:
        monkeypatch.delenv(key)
    for k, v in literal.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("APP_INGEST__KEEPALIVE_S", str(tf["locals"]["keepalive_s"]))
    monkeypatch.setenv("APP_INGEST__SEND_TIMEOUT_S", str(tf["locals"]["send_timeout_s"]))
    monkeypatch.setenv("APP_SERVER__GRACEFUL_SHUTDOWN_S", str(tf["locals"]["graceful_s"]))
    s = load_settings()
    assert s.metrics.emf and s.device == "gpu" and s.server.port == 8000
    assert env["APP_TRITON__URL"] == '"${local.triton_dns}:8001"' and tf["locals"]["triton_dns"].startswith("triton.")
    assert re.search(r"portMappings\s*=\s*\[\{containerPort = 8000", task(tf, "gateway"))
    assert "readonlyRootFilesystem = true" in task(tf, "gateway")
    assert '"python", "-m", "gateway.healthcheck", "/health"' in task(tf, "gateway")


def test_authentication_is_on_with_a_generated_key(tf: dict, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    # given the gateway task's APP_AUTH__API_KEYS secret: a JSON list of one generated key
    res = tf["resource"]
    injected = '{name = "APP_AUTH__API_KEYS", valueFrom = aws_secretsmanager_secret.gateway_api_keys.arn}'
    assert injected in task(tf, "gateway")
    version = res["aws_secretsmanager_secret_version"]["gateway_api_keys"]
    assert version["secret_string"] == "${jsonencode([random_password.gateway_api_key.result])}"
    key = res["random_password"]["gateway_api_key"]
    assert key["length"] >= 32 and key["special"] is False, "long, and safe in a header"
    assert "aws_kms_key.main" in res["aws_secretsmanager_secret"]["gateway_api_keys"]["kms_key_id"]
    # and the execution role may read it, which ECS needs to inject it
    reads = tf["data"]["aws_iam_policy_document"]["execution_secrets"]["statement"][0]["resources"]
    assert "${aws_secretsmanager_secret.gateway_api_keys.arn}" in reads
    # then a value of that shape turns authentication on
    for k in [k for k in __import__("os").environ if k.startswith("APP_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("APP_AUTH__API_KEYS", '["' + "A1b2C3d4" * 6 + '"]')
    assert load_settings().auth.enabled


def test_alarms_watch_metrics_the_gateway_emits(tf: dict) -> None:  # type: ignore[type-arg]
    from gateway.config import MetricsSettings

    line = EmfWindow("s", "m", MetricsSettings(log_every=1, dimensions={"service": "svc"})).add(10.0, 20.0, 2.0, 0)[0]
    import json

    record = json.loads(line)
    emitted = {m["Name"] for m in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    rollups = record["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    alarms = tf["resource"]["aws_cloudwatch_metric_alarm"]
    env = gateway_env(tf)
    namespace = env["APP_METRICS__NAMESPACE"].strip('"')
    frame_age = alarms["frame_age"]
    assert frame_age["namespace"] == namespace and frame_age["metric_name"] in emitted
    assert frame_age["extended_statistic"] == "p95", "a real percentile over the published values"
    assert list(frame_age["dimensions"]) == ["service"] and ["service"] in rollups
    assert "service = var.name" in env["APP_METRICS__DIMENSIONS"]
    queried = {q["metric"][0]["metric_name"] for q in alarms["error_rate"]["metric_query"] if "metric" in q}
    assert queried == {"Errors", "Predictions"} and queried <= emitted


def test_every_skipped_check_says_why() -> None:
    skips = re.findall(r"#checkov:skip=([A-Z0-9_]+)(:?)(.*)", "".join(p.read_text() for p in INFRA.rglob("*.tf")))
    assert skips, "the scan has skips to explain"
    for check, colon, reason in skips:
        assert colon and len(reason.strip()) >= 20, f"{check}: no reason given"


def test_checkov_finds_nothing() -> None:
    assert CHECKOV.is_file(), "make deploy-tools installs checkov into .venv-deploy"
    for target in (
        ["--directory", str(INFRA), "--framework", "terraform"],
        ["--file", str(ROOT / "deploy/gateway/Dockerfile"), "--file", str(ROOT / "deploy/exporter/Dockerfile"),
         "--framework", "dockerfile"],
        ["--directory", str(ROOT / ".github/workflows"), "--framework", "github_actions"],
    ):  # fmt: skip
        done = subprocess.run(
            [str(CHECKOV), "--quiet", "--compact", "--skip-download", *target],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        summary = re.search(r"Passed checks: (\d+), Failed checks: (\d+)", done.stdout)
        assert summary, done.stdout[-2000:] + done.stderr[-2000:]
        assert int(summary.group(2)) == 0 and done.returncode == 0, done.stdout[-4000:]
        assert int(summary.group(1)) > 50


@pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary: no registry here serves one")
def test_terraform_fmt_finds_nothing() -> None:
    done = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", str(INFRA)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_example_variables_cover_every_required_one(tf: dict) -> None:  # type: ignore[type-arg]
    example = (INFRA / "terraform.tfvars.example").read_text()
    required = [name for name, v in tf["variable"].items() if "default" not in v]
    missing = [name for name in required if not re.search(rf"^{name}\s*=", example, re.MULTILINE)]
    assert not missing, f"terraform.tfvars.example lacks {missing}"
    for name, v in tf["variable"].items():
        assert v.get("description"), f"variable {name} has no description"
    assert Path(INFRA / "README.md").is_file()
