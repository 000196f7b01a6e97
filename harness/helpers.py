"""Helpers shared by the tests and the benchmarks: free ports, condition waits, test
images, the gateway as a real process, an SSE reader, ``/metrics`` and ``/streams``
readers.  The one place these live; nothing here imports from ``tests/``."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families

from embedded_triton.server import die_with_parent
from gateway.inference.model import ModelInfo

ROOT = Path(__file__).resolve().parents[1]
# What Triton's metadata says of a small classifier and of a detector (unit tests with the client patched)
CLASSIFIER_INFO = ModelInfo(
    name="mobilenet_v3_small", version="1", task="classification", input_name="input", input_datatype="UINT8",
    input_shape=(3, 224, 224), output_name="probabilities", num_classes=10, max_batch_size=16,
    instance_kinds=("CPU",),
)  # fmt: skip
DETECTOR_INFO = replace(
    CLASSIFIER_INFO, name="person_detector", task="detection", input_name="images", input_shape=(3, -1, -1),
    output_name="", num_classes=3, class_names=("__background__", "person", "car"),
)  # fmt: skip
PYTHON = sys.executable
TRITON_VENV = ROOT / ".venv-triton"


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def blocking_twins(client: Any) -> None:
    """A patched ``TritonClient`` (``AsyncMock(spec=TritonClient)``) whose ``classify_blocking`` and
    ``detect_blocking`` (called from worker threads) run its ``classify`` and ``detect`` mocks: one
    set of answers, side effects and call records for both ways of asking Triton."""
    client.classify_blocking.side_effect = lambda *a, **kw: asyncio.run(client.classify(*a, **kw))
    client.detect_blocking.side_effect = lambda *a, **kw: asyncio.run(client.detect(*a, **kw))


def free_port() -> int:
    """A free loopback port that this process was never handed before.  The OS may give the
    same port to two binds in a row once the first socket is closed; a server handed one port
    for two listeners (gRPC and HTTP) then fails to bind (seen once in CI)."""
    with _handed_out_lock:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- test images ---------------------------------------------------------------------------------


def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like test image: gradients, texture, noise and shapes with hard edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx * 255 / width, yy * 255 / height, 128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0)], axis=-1)
    base += rng.normal(0, 12, base.shape)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(5, max(6, width // 3))), y0 + int(rng.integers(5, max(6, height // 3)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=color)
    return image


def encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


# --- processes -----------------------------------------------------------------------------------


def _processes() -> Iterator[tuple[int, list[str], str]]:
    """(pid, the fields of /proc/pid/stat after the name, the command line) of every live process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            yield int(entry.name), fields, cmdline


def process_group_members(pgid: int) -> list[int]:
    """PIDs whose process group is ``pgid`` (zombies excluded)."""
    return [pid for pid, fields, _ in _processes() if int(fields[2]) == pgid]


def children(ppid: int, needle: str = "") -> list[int]:
    """Live child processes of ``ppid`` whose command line contains ``needle``."""
    return [pid for pid, fields, cmdline in _processes() if int(fields[1]) == ppid and needle in cmdline]


class GatewayProcess:
    """The real gateway, ``uvicorn gateway.main:create_app --factory``, on a free loopback port."""

    def __init__(
        self, env: dict[str, str], log_path: Path, *, log_level: str = "info", access_log: bool = True
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {**os.environ, **env}  # the process's whole environment
        self._args = ["--log-level", log_level, *([] if access_log else ["--no-access-log"])]
        self.command: list[str] | None = None  # None: uvicorn on self.port (set it to run another entry point)
        self.cwd = ROOT
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, timeout: float = 90.0, ready_path: str = "/health") -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        uvicorn = [PYTHON, "-m", "uvicorn", "gateway.main:create_app", "--factory", "--host", "127.0.0.1"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command or [*uvicorn, "--port", str(self.port), *self._args],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # SIGTERM when this process dies, even by a signal that skips its clean-up (a benchmark killed
                # with SIGTERM left its gateway running): what embedded_triton does for Triton
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl
            )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()[-5000:]}")
            try:
                return httpx.get(f"{self.url}{ready_path}", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout, what=f"gateway {ready_path}")

    def log(self) -> str:
        """The whole log so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def gateway(env: dict[str, str], log_path: Path, **kw: Any) -> Iterator[GatewayProcess]:
    """A started ``GatewayProcess`` (keyword arguments go to ``start``), stopped on the way out."""
    gw = GatewayProcess(env, log_path, **{k: kw.pop(k) for k in ("log_level", "access_log") if k in kw})
    try:
        gw.start(**kw)
        yield gw
    finally:
        gw.stop()


# --- the gateway's API ---------------------------------------------------------------------------


def stream_info(gw: GatewayProcess | str, sid: str, *, key: str | None = None) -> dict[str, Any]:
    """One stream's row of ``GET /streams`` (sending the API key ``key``, for a gateway with auth on)."""
    base = gw if isinstance(gw, str) else gw.url
    r = httpx.get(f"{base}/streams", headers=api_key(key), timeout=10)
    assert r.status_code == 200, f"GET /streams: {r.status_code} {r.text[:200]}"
    found: list[dict[str, Any]] = [s for s in r.json() if s["id"] == sid]
    assert found, f"no stream {sid}"
    return found[0]


def api_key(key: str | None) -> dict[str, str]:
    """The headers that send API key ``key`` (none for None)."""
    return {} if key is None else {"X-API-Key": key}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gw: GatewayProcess | str) -> Samples:
    """``GET /metrics``, parsed with prometheus-client's own parser: (name, labels) -> value."""
    base = gw if isinstance(gw, str) else gw.url
    r = httpx.get(f"{base}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text[:200]
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    """A sample summed over all its label sets (every stream)."""
    return sum(v for (n, _), v in samples.items() if n == name)


# --- SSE -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SseEvent:
    type: str
    id: str | None
    data: dict[str, Any]
    received: float  # wall clock


@dataclass
class SseResponse:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    events: list[SseEvent] = field(default_factory=list)
    ended: bool = False  # the server ended the response (not our deadline)


async def read_sse(
    url: str,
    seconds: float,
    *,
    stop_after: int | None = None,
    on_event: Callable[[SseEvent], None] | None = None,
    headers: dict[str, str] | None = None,
    until: Callable[[], bool] | None = None,
) -> SseResponse:
    """Read ``url``'s Server-Sent Events for ``seconds`` (or until ``stop_after`` events, ``until()``
    is true after a chunk, or the end of the response).  A plain asyncio HTTP/1.1 client
    (chunked decoding, SSE framing): cheap enough for hundreds of subscribers on the machine
    under test."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n{extra}\r\n".encode())
    out = SseResponse()
    end = time.monotonic() + seconds

    async def line() -> bytes:
        return await asyncio.wait_for(reader.readline(), max(0.001, end - time.monotonic()))

    try:
        status = await line()
        out.status = int(status.split(b" ", 2)[1])
        while (h := (await line()).rstrip(b"\r\n")) != b"":
            name, _, val = h.decode("latin-1").partition(":")
            out.headers[name.strip().lower()] = val.strip()
        if out.status != 200:
            return out
        chunked = out.headers.get("transfer-encoding", "").lower() == "chunked"
        parser = _SseParser()
        while time.monotonic() < end:
            if chunked:
                size = int((await line()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    out.ended = True
                    break
                data = await asyncio.wait_for(reader.readexactly(size + 2), max(0.001, end - time.monotonic()))
                data = data[:-2]
            else:
                data = await line()
                if not data:
                    out.ended = True
                    break
            for event in parser.feed(data, time.time()):
                out.events.append(event)
                if on_event is not None:
                    on_event(event)
            if (stop_after is not None and len(out.events) >= stop_after) or (until is not None and until()):
                break
    except (TimeoutError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
    return out


class SseRecorder:
    """One SSE subscriber on a background thread: ``events`` fill in as they arrive until
    ``close()`` (or ``seconds``); ``response`` is the finished ``SseResponse``."""

    def __init__(self, url: str, seconds: float = 600, headers: dict[str, str] | None = None) -> None:
        self.events: list[SseEvent] = []
        self.response: SseResponse | None = None
        self._done = threading.Event()

        def run() -> None:
            self.response = asyncio.run(
                read_sse(url, seconds, on_event=self.events.append, until=self._done.is_set, headers=headers)
            )

        self._thread = threading.Thread(target=run, name="sse-recorder", daemon=True)
        self._thread.start()

    def of(self, kind: str, after: float = 0.0) -> list[SseEvent]:
        return [e for e in list(self.events) if e.type == kind and e.received > after]

    def close(self, timeout: float = 30) -> SseResponse:
        self._done.set()
        self._thread.join(timeout)
        assert self.response is not None, "the SSE reader did not finish"
        return self.response

    def __enter__(self) -> SseRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()


class _SseParser:
    def __init__(self) -> None:
        self._buf = b""
        self._type = "message"
        self._id: str | None = None
        self._data: list[str] = []

    def feed(self, data: bytes, received: float) -> list[SseEvent]:
        self._buf += data
        events = []
        while b"\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n", 1)
            text = raw.rstrip(b"\r").decode()
            if text == "":
                if self._data:
                    events.append(SseEvent(self._type, self._id, json.loads("\n".join(self._data)), received))
                self._type, self._data = "message", []
            elif text.startswith(":"):
                continue  # a keep-alive comment
            else:
                name, _, val = text.partition(":")
                val = val[1:] if val.startswith(" ") else val
                if name == "event":
                    self._type = val
                elif name == "data":
                    self._data.append(val)
                elif name == "id":
                    self._id = val
        return events


def sse(
    url: str, seconds: float, stop_after: int | None = None, into: list[tuple[str, dict[str, Any]]] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """Read server-sent events for ``seconds`` (or until ``stop_after`` events), appending
    ``(type, data)`` to ``into`` as they come; checks the response is a proper SSE response."""
    events: list[tuple[str, dict[str, Any]]] = [] if into is None else into
    r = asyncio.run(read_sse(url, seconds, stop_after=stop_after, on_event=lambda e: events.append((e.type, e.data))))
    assert r.status == 200, f"GET {url}: {r.status}"
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["content-type"].startswith("text/event-stream")
    return events


def predictions(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [data for kind, data in events if kind == "prediction"]


async def stream_predictions(
    base_url: str, sid: str, seconds: float, on_event: Callable[[dict[str, Any]], None]
) -> None:
    """One subscriber of stream ``sid`` for ``seconds``: ``on_event(data)`` for each prediction,
    with the wall-clock receive time added as ``_received``."""

    def relay(e: SseEvent) -> None:
        if e.type == "prediction":
            on_event({**e.data, "_received": e.received})

    await read_sse(f"{base_url}/streams/{sid}/events", seconds, on_event=relay)


# --- contract objects for tests ------------------------------------------------------------------


def detection_event(stream: str, frame: int, *, person: bool = False, at: float | None = None) -> Any:
    """A ``schema.DetectionEvent`` as a detector stream would publish it (one box if ``person``)."""
    from gateway.schema import Box, DetectionEvent, ImageSize, Latency

    boxes = [Box(x1=10, y1=10, x2=50, y2=80, score=0.9, label="person")] if person else []
    return DetectionEvent(
        model="person_detector",
        model_version="1",
        image=ImageSize(width=640, height=360),
        label="person" if person else "no_person",
        person_count=len(boxes),
        threshold=0.5,
        boxes=boxes,
        stream=stream,
        frame=frame,
        captured_at=time.time() if at is None else at,
        latency_ms=Latency(wait=1.0, preprocess=2.0, inference=10.0, total=13.0),
    )
