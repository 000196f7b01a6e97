"""The one typed settings object: YAML file (path in ``APP_CONFIG``) + ``APP_*`` env + secret files.

Precedence, highest first: ``APP_*`` environment variables (nested fields with a
double underscore, e.g. ``APP_TRITON__URL``), secret files (one file per setting,
named like the variable in lower case, ``app_streams`` or ``app_capture__s3__bucket``,
in ``APP_SECRETS_DIR``, default ``/run/secrets`` where Docker and Kubernetes mount
them), the YAML file, the defaults below.  Unknown keys and invalid values stop
start-up with the field's name.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from gateway.errors import ConfigError
from gateway.parsing import ascii_digits

CONFIG_ENV = "APP_CONFIG"
SECRETS_ENV = "APP_SECRETS_DIR"
DEFAULT_SECRETS_DIR = "/run/secrets"
DEMO_STREAM = "demo"  # the id of the demo stream (demo.enabled)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TritonSettings(_Section):
    url: str = Field(
        "localhost:8001",
        min_length=1,
        description="Triton's gRPC target: host:port, or several Tritons balanced round-robin: "
        "ipv4:10.0.0.1:8001,10.0.0.2:8001, or dns:///triton-headless:8001 (every address the name resolves to).",
    )
    request_timeout_s: float = Field(
        2.0, gt=0, le=120, description="Deadline of one inference call; past it /predict answers 503."
    )
    startup_timeout_s: float = Field(
        30.0,
        ge=0,
        le=600,
        description="How long start-up waits for Triton and the models; the gateway starts "
        "anyway after it (not ready, 503) and keeps retrying.",
    )
    health_timeout_s: float = Field(1.0, gt=0, le=30, description="Deadline of each readiness probe call.")
    retry_after_s: int = Field(2, ge=1, le=3600, description="Retry-After header sent with 503 answers.")
    max_reconnect_backoff_s: float = Field(
        2.0, gt=0, le=120, description="Cap on gRPC's reconnect backoff, so recovery after a Triton restart is quick."
    )

    @field_validator("url")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not ascii_digits(port) or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port (gRPC, no scheme), got {v!r}")
        return v


class UploadSettings(_Section):
    max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest accepted image upload, in bytes (413 above)."
    )
    max_pixels: int = Field(40_000_000, ge=1, description="Largest accepted image, width x height (413 above).")
    allowed_types: tuple[Literal["image/jpeg", "image/png", "image/webp"], ...] = Field(
        ("image/jpeg", "image/png", "image/webp"), min_length=1, description="Accepted image formats (415 otherwise)."
    )


class PreprocessSettings(_Section):
    resize_size: int = Field(
        256,
        ge=1,
        description="Shorter side after resizing, before the center crop to the model's input size "
        "(torchvision's MobileNetV3 preset: 256 then 224).",
    )
    mean: tuple[float, float, float] = Field(
        (0.485, 0.456, 0.406), description="Normalization mean, used only for models that take float32 input."
    )
    std: tuple[float, float, float] = Field(
        (0.229, 0.224, 0.225), description="Normalization std, used only for models that take float32 input."
    )
    workers: int = Field(
        2,
        ge=1,
        le=64,
        description="At most this many threads decode or preprocess at once, uploads and stream frames together "
        "(off the event loop); a stream frame is preprocessed on its reader's thread when one of these slots is "
        "free, else in one of these threads, in turn.",
    )

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("every std value must be > 0")
        return v


class DetectorSettings(_Section):
    score_threshold: float = Field(
        0.5, ge=0, le=1, description="A box counts at or above this score; a person box decides person / no_person."
    )
    person_class: str = Field("person", min_length=1, description="The detector's class name that means a person.")
    all_classes: bool = Field(
        False, description="Also return boxes of every other class at or above the threshold (default: persons only)."
    )


class MetricsSettings(_Section):
    emf: bool = Field(
        True, description="Log one CloudWatch Embedded Metric Format JSON line per stream every log_every predictions."
    )
    log_every: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Predictions per stream between two EMF flushes (one record per 100 values; latencies and "
        "frame ages are published as values, so CloudWatch computes real percentiles).",
    )
    namespace: str = Field("stream-ml", min_length=1, max_length=255, description="CloudWatch namespace of EMF lines.")
    dimensions: dict[str, str] = Field(
        default_factory=lambda: {"service": "stream-ml-service"},
        description="Extra CloudWatch dimensions on every EMF line (stream and model are always added).",
    )

    @field_validator("dimensions")
    @classmethod
    def _few(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 28:  # CloudWatch allows 30 dimensions; stream and model take two
            raise ValueError("at most 28 dimensions")
        if {"stream", "model"} & set(v):
            raise ValueError("'stream' and 'model' are added per line; use other names")
        return v


class S3Settings(_Section):
    bucket: str | None = Field(None, description="Upload captures to this S3 bucket; null keeps them local.")
    prefix: str = Field("captures/", description="Key prefix; keys are prefix + YYYY/MM/DD/<stream>/<name>.")
    endpoint_url: str | None = Field(None, description="S3 endpoint (null: AWS; set for MinIO or a test server).")
    region: str | None = Field(None, description="AWS region (null: boto3's default chain).")
    connect_timeout_s: float = Field(2.0, gt=0, le=60, description="boto3 connect timeout.")
    read_timeout_s: float = Field(5.0, gt=0, le=300, description="boto3 read timeout.")
    max_attempts: int = Field(3, ge=1, le=10, description="boto3 'standard' retry mode attempts per request.")
    backoff_initial_s: float = Field(0.5, gt=0, le=60, description="Spool retry delay after a failed pass; doubles.")
    backoff_max_s: float = Field(30.0, gt=0, le=3600, description="Cap on the spool retry delay.")
    poll_s: float = Field(1.0, gt=0, le=60, description="How often the uploader looks for new captures.")
    spool_max_captures: int = Field(
        10_000, ge=1, description="Captures kept waiting for S3; past it the oldest are deleted and counted."
    )


class CaptureSettings(_Section):
    enabled: bool = Field(False, description="Capture stream frames by the policy below.")
    root: str = Field("captures", min_length=1, description="Local folder (the spool when S3 is set).")
    every_nth: int | None = Field(None, ge=1, description="Capture every Nth sampled frame of each stream.")
    on_person: bool = Field(False, description="Capture frames where the detector found a person.")
    below_confidence: float | None = Field(
        None, gt=0, le=1, description="Capture frames whose top-1 classifier probability is below this."
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of captured frames.")
    queue_size: int = Field(64, ge=1, le=10_000, description="Captures waiting for the writer; more are dropped.")
    s3: S3Settings = Field(default_factory=S3Settings, description="Upload captures to S3 through a local spool.")


class StreamConfig(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Stream id, used in URLs.")
    url: str = Field(min_length=1, description="rtsp:// or rtsps:// URL, video file path, or webcam index.")
    sample_fps: float | None = Field(
        None, ge=0.01, le=120, description="Frames per second sampled (default: frame_sample_fps)."
    )
    width: int | None = Field(None, ge=16, le=7680, description="Frame width after ingest (default: frame_width).")
    height: int | None = Field(None, ge=16, le=4320, description="Frame height after ingest (default: frame_height).")
    model: str | None = Field(None, min_length=1, description="Triton model for this stream (default: model).")
    loop: bool = Field(False, description="Files only: start again at the end.")
    decode: Literal["auto", "keyframes", "all"] | None = Field(
        None,
        description="What the PyAV reader decodes (default: ingest.decode): keyframes only, all frames, or auto.",
    )
    rtsp_transport: Literal["tcp", "udp", "udp_multicast", "http"] | None = Field(
        None, description="RTSP's transport for this camera (default: ingest.rtsp_transport)."
    )


class StreamPolicy(_Section):
    allowed_schemes: tuple[Literal["rtsp", "rtsps"], ...] = Field(
        ("rtsp", "rtsps"), description="URL schemes POST /streams accepts (files and webcams are config-only)."
    )
    allowed_hosts: tuple[str, ...] = Field(
        (), description="Hosts POST /streams may reach; empty refuses every runtime-added stream."
    )
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = Field(
        (),
        description="Networks (CIDR) an allowed host may resolve into although they are loopback, link-local, "
        "private or otherwise not public, e.g. 10.0.0.0/8 for cameras on a LAN; empty: public addresses only.  "
        "Cloud metadata addresses (169.254.169.254, 169.254.170.2, fd00:ec2::254) are refused regardless.",
    )
    resolve_timeout_s: float = Field(
        2.0, gt=0, le=30, description="Bound on resolving a runtime stream's host; past it POST /streams is refused."
    )
    max_streams: int = Field(
        256, ge=1, le=100_000, description="Streams the gateway runs at most; POST /streams beyond it is refused (403)."
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [h for h in v if not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", h)]
        if bad:
            raise ValueError(f"hosts are names or IP addresses (letters, digits, '.', '-', '_', ':'), got {bad}")
        return v

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _networks(cls, v: object) -> object:
        """CIDRs parsed by ``ipaddress``, whose one message ("has host bits set") beats one error per IP version."""
        if isinstance(v, list | tuple):
            return tuple(ipaddress.ip_network(n) if isinstance(n, str) else n for n in v)
        return v


class IngestSettings(_Section):
    backend: Literal["pyav", "opencv"] = Field(
        "pyav",
        description="The reader: pyav (FFmpeg through PyAV: per-open options, keyframe-only decoding, the camera's "
        "timestamps) or opencv (the fallback; decodes every frame, stamps frames when read).",
    )
    decode: Literal["auto", "keyframes", "all"] = Field(
        "auto",
        description="PyAV: auto decodes only keyframes when a stream's sample_fps is at or below its measured "
        "keyframe rate, else every frame from each keyframe up to the GOP's last sample (converting only the sampled "
        "ones); keyframes, or all (every frame), force one mode.  Per stream: streams[].decode.",
    )
    hwaccel: str | None = Field(
        None,
        description="PyAV: decode on this FFmpeg hardware device type, e.g. cuda (NVDEC) or vaapi; must be one "
        "this FFmpeg build supports.  A device that cannot be opened is logged and the stream decodes in "
        "software.  null: software.",
    )
    decoder_threads: int = Field(
        1, ge=0, le=64, description="PyAV: decoder threads per stream; 1 suits many cameras, 0 lets FFmpeg choose."
    )
    burst_kib: int = Field(
        64,
        ge=0,
        le=65536,
        description="PyAV, keyframe mode, RTSP over TCP: between keyframes the reader sleeps and then reads the frames "
        "it skips in one burst from the socket's buffer, at most this many KiB of the stream, waking a little before "
        "the next keyframe is due (~3x less CPU for reading).  0: read each frame as it arrives.",
    )
    ffmpeg_options: dict[str, str] = Field(
        default_factory=dict,
        description="Extra FFmpeg options for every open, e.g. {buffer_size: '1048576'} (PyAV: per open; OpenCV: "
        "through its process-wide variable).  The protocol whitelist cannot be changed here.",
    )
    rtsp_transport: Literal["tcp", "udp", "udp_multicast", "http"] = Field(
        "tcp", description="RTSP's transport (per stream: streams[].rtsp_transport)."
    )
    batch_window_ms: float = Field(
        25.0,
        ge=0,
        le=1000,
        description="Stream frames of one model that become ready within this window go to Triton as one request "
        "(sent sooner when batch_max frames are waiting, or when no other stream's frame is due before the window "
        "ends): each frame waits at most this long, and a request's fixed cost is shared.  "
        "0: every frame is a request of its own.  Uploads are never held back.",
    )
    batch_max: int = Field(
        8,
        ge=1,
        le=256,
        description="Most stream frames in one Triton request (and at most the model's max_batch_size).",
    )
    open_timeout_s: float = Field(5.0, gt=0, le=120, description="Bound on opening a source.")
    read_timeout_s: float = Field(5.0, gt=0, le=120, description="A source silent this long is reconnected.")
    backoff_initial_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay; doubles, with jitter.")
    backoff_max_s: float = Field(10.0, gt=0, le=600, description="Cap on the reconnect delay.")
    max_retries: int | None = Field(None, ge=0, description="Reconnects before a stream is failed; null: forever.")
    subscriber_queue: int = Field(16, ge=1, le=1024, description="Events buffered per SSE subscriber (oldest dropped).")
    send_timeout_s: float = Field(10.0, gt=0, le=300, description="An SSE subscriber that stops reading is dropped.")
    keepalive_s: float = Field(15.0, gt=0, le=60, description="SSE keep-alive comment interval.")
    max_client_lag_s: float = Field(
        8.0,
        gt=0,
        le=600,
        description="An SSE subscriber that has not read what was sent this long ago is disconnected (checked "
        "every second from its socket's TCP state, under python -m gateway).",
    )
    max_subscribers: int = Field(
        2000, ge=1, le=1_000_000, description="SSE subscribers over all streams; one more gets 503 at once."
    )
    resume_events: int = Field(
        120,
        ge=0,
        le=100_000,
        description="Events each stream keeps for SSE clients that reconnect with Last-Event-ID (the resume ring); "
        "about 0.5-2 KB each.",
    )
    resume_s: float = Field(60.0, ge=0, le=3600, description="Events older than this leave the resume ring.")
    retry_ms: int = Field(
        1000, ge=100, le=600_000, description="The SSE retry: hint, how long an EventSource waits to reconnect."
    )

    @field_validator("hwaccel")
    @classmethod
    def _hwaccel(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import av.codec.hwaccel  # only when a device is asked for

        known = sorted(av.codec.hwaccel.hwdevices_available())
        if v not in known:
            raise ValueError(f"{v!r} is not a hardware device type this FFmpeg supports: {', '.join(known)}")
        return v

    @field_validator("ffmpeg_options")
    @classmethod
    def _ffmpeg_options(cls, v: dict[str, str]) -> dict[str, str]:
        from gateway.ingest.sources import PROTECTED_OPTIONS  # here: loading settings does not load the readers

        bad = sorted(PROTECTED_OPTIONS & set(v))
        if bad:
            raise ValueError(f"{', '.join(bad)} cannot be set: each source kind has its fixed protocol whitelist")
        return v


class ViewerSettings(_Section):
    enabled: bool = Field(True, description="Serve the web viewer at / (static files; the API is unaffected).")
    frame_interval_s: float = Field(
        0.5,
        ge=0.05,
        le=60,
        description="GET /streams/{id}/frame.jpg encodes a stream's latest frame at most once per this interval, "
        "however many viewers ask; in between they get the same JPEG.",
    )
    jpeg_quality: int = Field(80, ge=10, le=100, description="Quality of frame.jpg.")


class DemoSettings(_Section):
    enabled: bool = Field(
        False,
        description="With no rtsp_url and no streams, run a demo stream (id 'demo'): a generated test-card clip "
        "played in a loop.  make run turns it on; a configured camera replaces it.",
    )
    path: Path = Field(
        Path("build/demo/demo.mp4"), description="The demo clip; written here on first use if it does not exist."
    )


class AdmissionSettings(_Section):
    max_in_flight: int = Field(
        32,
        ge=1,
        le=10_000,
        description="POST /predict requests processed at once; more wait in the admission queue.  Past the "
        "machine's throughput, more concurrency only makes every request later.  Each has its own upload thread "
        "(decode, preprocess, the Triton call).",
    )
    max_queue: int = Field(
        32,
        ge=0,
        le=100_000,
        description="Requests waiting for a slot; one more is refused at once with 503 overloaded and Retry-After.",
    )
    queue_timeout_s: float = Field(
        1.0, gt=0, le=60, description="Longest wait in the queue; past it the request is refused (503 overloaded)."
    )
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After header of an overloaded answer.")


_NODE_ID = r"^[A-Za-z0-9_.-]{1,128}$"
_REDIS_URL = re.compile(r"(redis|rediss|unix)://\S+")


def _hostname() -> str:
    """The default node id: the host name, which a StatefulSet keeps per pod (gateway-0, gateway-1)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:128]
    return name or "gateway"


class ClusterSettings(_Section):
    redis_url: SecretStr | None = Field(
        None,
        description="Cluster mode: redis://[:password@]host:port/db (rediss:// for TLS).  Streams are then shared "
        "by every gateway with the same Redis: each runs on one of them, any of them serves its events.  Null: one "
        "gateway on its own, with no Redis (the default).",
    )
    node_id: str | None = Field(
        None,
        pattern=_NODE_ID,
        description="This gateway's id in the cluster (unique among live gateways); null: the host name.",
    )
    lease_s: float = Field(
        10.0,
        ge=1,
        le=300,
        description="A gateway that has not renewed its membership or a stream's lease for this long is gone: its "
        "streams move to the others.  Renewed every lease_s / 3.",
    )
    key_prefix: str = Field(
        "streamml",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Prefix of every Redis key (several stacks, one Redis).",
    )
    events_maxlen: int = Field(
        1000,
        ge=10,
        le=1_000_000,
        description="Events kept per stream in its Redis Stream (XADD MAXLEN ~): how far back Last-Event-ID can "
        "resume on any gateway.",
    )
    op_timeout_s: float = Field(
        1.0, gt=0, le=30, description="Deadline of one Redis command (socket timeout); past it Redis is down."
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not _REDIS_URL.fullmatch(v.get_secret_value()):
            raise ValueError("must be redis://, rediss:// or unix:// followed by the address")
        return v

    @property
    def enabled(self) -> bool:
        return self.redis_url is not None

    @property
    def node(self) -> str:
        """This gateway's id: ``node_id``, or the host name."""
        return self.node_id or _hostname()


class ServerSettings(_Section):
    host: str = Field("0.0.0.0", description="Address the gateway listens on.")  # noqa: S104 - a server
    port: int = Field(8000, ge=0, lt=65536, description="Port the gateway listens on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    graceful_shutdown_s: int = Field(
        15,
        ge=1,
        le=300,
        description="On SIGTERM, how long uvicorn waits for open requests and SSE responses to finish; at least "
        "ingest.send_timeout_s, and below the orchestrator's stop grace period (compose stop_grace_period 30 s).",
    )


_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(:[0-9]{1,5})?", re.IGNORECASE)
_API_KEY = re.compile(r"[\x21-\x7e]{16,512}")  # printable ASCII, no spaces: it travels in a header
_KEY_LIST: TypeAdapter[tuple[str, ...]] = TypeAdapter(tuple[str, ...])


class AuthSettings(_Section):
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="API keys (16-512 printable ASCII characters, no spaces) that POST /predict, the stream "
        "routes and POST /auth/token demand, as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'; empty "
        "turns authentication off.  In env or a secret file: a JSON list, or keys separated by commas or newlines.",
    )
    token_ttl_s: int = Field(
        300, ge=10, le=86_400, description="Lifetime of an SSE token from POST /auth/token (the SSE routes' ?token=)."
    )
    token_secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key (at least 32 characters) that signs SSE tokens; null derives one from "
        "api_keys, so every replica with the same keys accepts the others' tokens.",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        """A JSON list, or keys separated by commas or newlines (a secret file holding one plain key)."""
        if not isinstance(v, str):
            return v
        if v.lstrip().startswith("["):
            try:
                return _KEY_LIST.validate_json(v)
            except ValidationError:
                raise ValueError("expected a JSON list of strings") from None  # its message would show the keys
        return tuple(key.strip() for key in re.split(r"[,\n]", v) if key.strip())

    @field_validator("api_keys")
    @classmethod
    def _strong(cls, v: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        bad = [i for i, key in enumerate(v) if not _API_KEY.fullmatch(key.get_secret_value())]
        if bad:  # positions only: a key is never printed
            raise ValueError(f"keys at positions {bad} are not 16-512 printable ASCII characters without spaces")
        return v

    @field_validator("token_secret")
    @classmethod
    def _long(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="APP_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
        hide_input_in_errors=True,  # a chained ValidationError never prints a key; _describe shows what is safe
    )

    model: str = Field(
        "mobilenet_v3_small",
        min_length=1,
        description="Triton model that /predict and streams use by default: mobilenet_v3_small (classifier) or "
        "person_detector (detector).",
    )
    device: Literal["cpu", "gpu"] = Field(
        "cpu", description="Where Triton runs the model; /health/ready reports a model whose instances run elsewhere."
    )
    top_k: int = Field(5, ge=1, le=100, description="Default number of classes returned per prediction.")
    frame_width: int = Field(
        640,
        ge=16,
        le=7680,
        description="Width frames are resized to after ingest (streams); uploads to a detector are letterboxed to "
        "frame_width x frame_height.",
    )
    frame_height: int = Field(
        360,
        ge=16,
        le=4320,
        description="Height frames are resized to after ingest (streams) and uploads to a detector are letterboxed to.",
    )
    frame_sample_fps: float = Field(2.0, ge=0.01, le=120, description="Frames per second sampled from each stream.")
    cors_origins: tuple[str, ...] = Field(
        (), description="Origins allowed by CORS, each scheme://host[:port] or '*'; empty disables CORS."
    )
    cors_allow_credentials: bool = Field(
        False,
        description="Let browsers send cookies or HTTP authentication cross-origin (Access-Control-Allow-"
        "Credentials); refused with '*' in cors_origins.  API keys in headers do not need it.",
    )
    rtsp_url: str | None = Field(None, description="The default stream (id 'default'), served by GET /stream.")
    streams: tuple[StreamConfig, ...] = Field((), description="Streams started with the gateway.")
    stream_policy: StreamPolicy = Field(
        default_factory=StreamPolicy, description="What POST /streams may add at runtime."
    )
    ingest: IngestSettings = Field(
        default_factory=IngestSettings, description="Reading sources: timeouts, reconnects, SSE delivery."
    )
    triton: TritonSettings = Field(default_factory=TritonSettings, description="The Triton server and its deadlines.")
    detector: DetectorSettings = Field(
        default_factory=DetectorSettings, description="How detector answers become person / no_person and boxes."
    )
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="CloudWatch EMF lines (GET /metrics is always on)."
    )
    capture: CaptureSettings = Field(
        default_factory=CaptureSettings, description="Keep stream frames for retraining, locally or in S3."
    )
    upload: UploadSettings = Field(default_factory=UploadSettings, description="Limits on POST /predict uploads.")
    preprocess: PreprocessSettings = Field(
        default_factory=PreprocessSettings, description="Classifier preprocessing and its worker threads."
    )
    server: ServerSettings = Field(default_factory=ServerSettings, description="Where the gateway listens.")
    admission: AdmissionSettings = Field(
        default_factory=AdmissionSettings,
        description="Overload control of POST /predict: a bounded number in flight, a bounded queue, fast 503s beyond.",
    )
    auth: AuthSettings = Field(
        default_factory=AuthSettings, description="API keys and SSE tokens; off while auth.api_keys is empty."
    )
    viewer: ViewerSettings = Field(
        default_factory=ViewerSettings, description="The web viewer at / and the frames it shows."
    )
    demo: DemoSettings = Field(default_factory=DemoSettings, description="A demo stream when no camera is configured.")
    cluster: ClusterSettings = Field(
        default_factory=ClusterSettings,
        description="Several gateways sharing the streams through Redis; off while cluster.redis_url is unset.",
    )

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [o for o in v if o != "*" and not _ORIGIN.fullmatch(o)]
        if bad:
            raise ValueError(f"origins are scheme://host[:port] (no path, no trailing slash) or '*': {bad}")
        return tuple(o.lower() for o in v)  # browsers send scheme and host in lower case

    @model_validator(mode="after")
    def _no_credentials_for_everyone(self) -> Settings:
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ValueError(
                "cors_allow_credentials (APP_CORS_ALLOW_CREDENTIALS) cannot be true while cors_origins "
                "(APP_CORS_ORIGINS) holds '*': list the origins that may send credentials"
            )
        return self

    @model_validator(mode="after")
    def _unique_stream_ids(self) -> Settings:
        ids = [s.id for s in self.all_streams()]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"stream ids must be unique: {duplicates}")
        return self

    @model_validator(mode="after")
    def _shutdown_outlasts_a_send(self) -> Settings:
        if self.server.graceful_shutdown_s < self.ingest.send_timeout_s:
            raise ValueError(
                f"server.graceful_shutdown_s ({self.server.graceful_shutdown_s:g}) must be at least "
                f"ingest.send_timeout_s ({self.ingest.send_timeout_s:g}): a stalled SSE send is cut at shutdown"
            )
        return self

    def all_streams(self) -> list[StreamConfig]:
        """Configured streams, with rtsp_url first as the 'default' stream; with none and demo.enabled,
        the demo stream."""
        if self.demo_active:
            return [StreamConfig(id=DEMO_STREAM, url=str(self.demo.path), loop=True)]
        extra = [StreamConfig(id="default", url=self.rtsp_url)] if self.rtsp_url else []
        return extra + list(self.streams)

    @property
    def demo_active(self) -> bool:
        """demo.enabled, and no camera configured to replace it."""
        return self.demo.enabled and not self.rtsp_url and not self.streams

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        secrets = Path(os.environ.get(SECRETS_ENV, DEFAULT_SECRETS_DIR))
        if secrets.is_dir():
            sources.append(
                NestedSecretsSettingsSource(
                    file_secret_settings, secrets_dir=secrets, secrets_prefix="APP_", secrets_nested_delimiter="__"
                )
            )
        path = os.environ.get(CONFIG_ENV)
        if path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=Path(path)))
        return tuple(sources)


def _secret(loc: tuple[int | str, ...]) -> bool:
    """Whether an error is about a secret: a ``SecretStr`` field, or anything in a section that
    holds one (a misspelt key's value may be the key).  Its input is never shown."""
    model: Any = Settings
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields:
            return False
        if model is not Settings and any("SecretStr" in str(f.annotation) for f in fields.values()):
            return True
        if part not in fields:
            return False
        model = fields[part].annotation
    return "SecretStr" in str(model)


def _describe(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        if not err["loc"]:  # a rule across fields: its message names them
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
            continue
        field = ".".join(str(p) for p in err["loc"])
        env = "APP_" + "__".join(str(p) for p in err["loc"]).upper()
        value = err.get("input")
        shown = "" if isinstance(value, dict) or _secret(err["loc"]) else f" (got {value!r})"
        lines.append(f"  {field}: {err['msg']}{shown}  [YAML key {field!r} or env {env}]")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings or raise ConfigError naming every bad field."""
    path = os.environ.get(CONFIG_ENV)
    if path and not Path(path).is_file():
        raise ConfigError(f"invalid configuration: {CONFIG_ENV}={path}: no such file")
    try:
        return Settings(**overrides)
    except ValidationError as e:
        source = f" (from {CONFIG_ENV}={path} and APP_* env)" if path else " (from APP_* env)"
        raise ConfigError(f"invalid configuration{source}:\n{_describe(e)}") from e
    except (OSError, ValueError, yaml.YAMLError) as e:  # unreadable or malformed YAML
        raise ConfigError(f"invalid configuration: cannot read {CONFIG_ENV}={path}: {e}") from e
