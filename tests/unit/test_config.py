"""Settings: YAML + APP_* env, precedence, and fail-fast messages that name the field."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from harness.helpers import PYTHON, ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("APP_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_need_no_file() -> None:
    s = load_settings()
    assert s.triton.url == "localhost:8001" and s.model == "mobilenet_v3_small" and s.top_k == 5


def test_example_config_is_true_to_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # given the committed example, when it is loaded, then it describes exactly the defaults
    defaults = Settings().model_dump()
    monkeypatch.setenv("APP_CONFIG", str(ROOT / "config.example.yaml"))
    assert load_settings().model_dump() == defaults


def test_yaml_then_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path, "top_k: 3\ntriton:\n  url: triton:9001\n  request_timeout_s: 4\ncors_origins: [http://a.test]\n"
    )
    monkeypatch.setenv("APP_CONFIG", str(path))
    monkeypatch.setenv("APP_TRITON__URL", "localhost:7001")
    s = load_settings()
    assert s.top_k == 3, "YAML value should apply"
    assert s.triton.url == "localhost:7001", "APP_* env should win over YAML"
    assert s.triton.request_timeout_s == 4, "untouched YAML keys in the same section should survive"
    assert s.cors_origins == ("http://a.test",)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"APP_TOP_K": "0"}, "top_k"),
        ({"APP_TRITON__URL": "http://triton"}, "triton.url"),
        ({"APP_TRITON__REQUEST_TIMEOUT_S": "-1"}, "triton.request_timeout_s"),
        ({"APP_UPLOAD__MAX_BYTES": "ten"}, "upload.max_bytes"),
        ({"APP_DEVICE": "tpu"}, "device"),
        ({"APP_PREPROCESS__STD": "[0.2, 0, 0.2]"}, "preprocess.std"),
        ({"APP_INGEST__BACKEND": "gstreamer"}, "ingest.backend"),
        ({"APP_INGEST__DECODE": "some"}, "ingest.decode"),
        ({"APP_INGEST__HWACCEL": "nvdec"}, "ingest.hwaccel"),  # FFmpeg's device type is cuda
        ({"APP_INGEST__FFMPEG_OPTIONS": '{"protocol_whitelist": "file,http"}'}, "ingest.ffmpeg_options"),
    ],
)
def test_invalid_env_value_names_the_field(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert f"  {field}:" in str(e.value), f"the message should name {field}: {e.value}"
    assert next(iter(env)) in str(e.value), "the message should name the env variable to fix"


def test_invalid_yaml_value_and_unknown_key_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_CONFIG", str(write(tmp_path, "triton:\n  request_timeout_s: 0\n  ulr: x:1\n")))
    with pytest.raises(ConfigError) as e:
        load_settings()
    message = str(e.value)
    assert "triton.request_timeout_s" in message and "triton.ulr" in message, message


def test_missing_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("APP_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="no such file"):
        load_settings()


def test_malformed_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("APP_CONFIG", str(write(tmp_path, "triton: [unclosed\n")))
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings()


def test_gateway_refuses_to_start_on_bad_config() -> None:
    # given an invalid value, when the gateway starts, then it exits at once naming the field
    result = subprocess.run(  # noqa: PLW1510 - the test asserts on returncode
        [PYTHON, "-m", "gateway"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "APP_UPLOAD__MAX_PIXELS": "-5"},
    )
    assert result.returncode == 2, result.stderr
    assert "upload.max_pixels" in result.stderr and "APP_UPLOAD__MAX_PIXELS" in result.stderr, result.stderr


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """Every setting that holds a value, with its dotted path: sections are walked into."""
    out = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += leaf_fields(ann, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", info))
    return out


def test_every_field_has_a_description_sections_included() -> None:
    def walk(model: type[BaseModel], prefix: str = "") -> list[str]:
        missing = []
        for name, info in model.model_fields.items():
            if not info.description:
                missing.append(f"{prefix}{name}")
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                missing += walk(info.annotation, f"{prefix}{name}.")
        return missing

    assert walk(Settings) == [], "fields without Field(description=...)"


def test_leaf_fields_walk_into_sections() -> None:
    paths = [p for p, _ in leaf_fields(Settings)]
    assert "model" in paths and "triton.request_timeout_s" in paths and "capture.s3.bucket" in paths
    assert "triton" not in paths and "capture.s3" not in paths


def test_every_setting_is_documented() -> None:
    # the configuration reference and the example file must cover every field, nested ones included
    reference = (ROOT / "docs" / "configuration.md").read_text()
    example = (ROOT / "config.example.yaml").read_text()
    for path, info in leaf_fields(Settings):
        assert f"`{path}`" in reference, f"docs/configuration.md lacks `{path}`"
        env = "APP_" + path.replace(".", "__").upper()
        assert env in reference, f"docs/configuration.md lacks the env name {env}"
        assert f"{path.rsplit('.', 1)[-1]}:" in example, f"config.example.yaml lacks {path}"
        assert info.description, f"{path} has no description (Field(description=...))"


def test_secret_files_set_settings_below_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given Docker-style secret files: one per setting, named like its variable in lower case
    (tmp_path / "app_rtsp_url").write_text("rtsp://admin:s3cret@cam.local/stream1\n")
    (tmp_path / "app_capture__s3__bucket").write_text("captures-prod")
    (tmp_path / "app_streams").write_text('[{"id": "dock", "url": "rtsp://u:pw@10.0.0.7/s"}]')
    monkeypatch.setenv("APP_SECRETS_DIR", str(tmp_path))
    s = load_settings()
    assert s.rtsp_url == "rtsp://admin:s3cret@cam.local/stream1" and s.capture.s3.bucket == "captures-prod"
    assert [c.id for c in s.all_streams()] == ["default", "dock"]
    # and the environment still wins
    monkeypatch.setenv("APP_CAPTURE__S3__BUCKET", "from-env")
    assert load_settings().capture.s3.bucket == "from-env"


def test_a_missing_secrets_dir_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_SECRETS_DIR", str(tmp_path / "none"))
    assert load_settings().rtsp_url is None


def test_shutdown_must_outlast_an_sse_send(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_SERVER__GRACEFUL_SHUTDOWN_S", "5")
    with pytest.raises(ConfigError, match=r"server\.graceful_shutdown_s \(5\) must be at least ingest\.send_timeout_s"):
        load_settings()
