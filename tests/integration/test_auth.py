"""Authentication end to end: the real gateway (uvicorn) with API keys and CORS, real Triton,
a looping stream read by a plain SSE client with a key or a token."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from embedded_triton import EmbeddedTriton
from gateway.api.auth import Authenticator
from gateway.config import AuthSettings
from harness.helpers import GatewayProcess, SseResponse, api_key, encode, gateway, read_sse, scene, stream_info
from harness.peers.clips import write_clip

pytestmark = pytest.mark.integration
KEYS = ("itest-key-one-0123456789", "itest-key-two-0123456789")
ORIGIN = "http://dashboard.test"


@pytest.fixture(scope="module")
def auth_gateway(triton: EmbeddedTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("auth")
    clip = write_clip(tmp / "loop.mp4", seconds=1.0, width=320, height=180)
    env = {
        "APP_TRITON__URL": triton.grpc_url,
        "APP_TRITON__REQUEST_TIMEOUT_S": "10",
        "APP_STREAMS": json.dumps([{"id": "cam", "url": str(clip), "loop": True}]),
        "APP_AUTH__API_KEYS": ",".join(KEYS),  # as a secret file would hold them
        "APP_CORS_ORIGINS": json.dumps([ORIGIN]),
        "APP_CORS_ALLOW_CREDENTIALS": "true",
    }
    with gateway(env, tmp / "gateway.log") as gw:
        yield gw


def sse_status(url: str, headers: dict[str, str] | None = None) -> SseResponse:
    """Open an SSE URL and read its first event (a subscriber's first event is the stream's status)."""
    return asyncio.run(read_sse(url, 20.0, stop_after=1, headers=headers))


def token(gw: GatewayProcess, stream: str | None = None) -> str:
    r = httpx.post(f"{gw.url}/auth/token", params={"stream": stream} if stream else {}, headers=api_key(KEYS[0]))
    assert r.status_code == 200, r.text
    value: str = r.json()["token"]
    return value


def test_predict_demands_a_valid_key(auth_gateway: GatewayProcess) -> None:
    image = {"image": ("a.jpg", encode(scene(160, 120), "JPEG"), "image/jpeg")}

    def predict(headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{auth_gateway.url}/predict", files=image, headers=headers, timeout=30)

    # given no key, then 401 with the error body and the challenge
    r = predict({})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
    assert r.headers["www-authenticate"] == "Bearer"
    # given either key, in either header, then the prediction
    for headers in (
        {"Authorization": f"Bearer {KEYS[0]}"},
        {"X-API-Key": KEYS[1]},
        {"authorization": f"bearer {KEYS[1]}"},
    ):
        r = predict(headers)
        assert r.status_code == 200 and r.json()["model"] == "mobilenet_v3_small", (headers, r.text)
    # given a wrong key, a near miss, or the key under another scheme, then 401
    for headers in (
        {"X-API-Key": "wrong-key-0123456789abc"},
        {"X-API-Key": KEYS[0][:-1]},
        {"Authorization": f"Basic {KEYS[0]}"},
    ):
        assert predict(headers).status_code == 401, headers


def test_stream_routes_demand_a_key(auth_gateway: GatewayProcess) -> None:
    url = auth_gateway.url
    assert httpx.get(f"{url}/streams").status_code == 401, "the list shows the cameras' hosts"
    assert stream_info(auth_gateway, "cam", key=KEYS[1])["id"] == "cam"
    body = {"id": "x", "url": "rtsp://127.0.0.1/x"}
    assert httpx.post(f"{url}/streams", json=body).status_code == 401
    assert httpx.delete(f"{url}/streams/cam").status_code == 401
    assert stream_info(auth_gateway, "cam", key=KEYS[0])["id"] == "cam", "a refused DELETE removed nothing"


def test_health_metrics_and_the_document_stay_open(auth_gateway: GatewayProcess) -> None:
    url = auth_gateway.url
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/health/ready").status_code == 200
    assert httpx.get(f"{url}/health/stream").status_code in (200, 503)
    assert httpx.get(f"{url}/metrics").status_code == 200
    doc = httpx.get(f"{url}/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"ApiKeyBearer", "ApiKeyHeader", "SseToken"}


def test_sse_opens_with_a_token_or_a_key(auth_gateway: GatewayProcess) -> None:
    url = auth_gateway.url
    # given no credentials, then 401 (a plain GET: the answer ends)
    assert httpx.get(f"{url}/streams/cam/events").status_code == 401
    assert httpx.post(f"{url}/auth/token").status_code == 401, "a token needs the key"
    # given a token for the stream, as EventSource sends it: the events flow
    r = sse_status(f"{url}/streams/cam/events?token={token(auth_gateway, 'cam')}")
    assert r.status == 200 and r.events and r.events[0].type == "status", r
    # given an unscoped token: /stream (the first configured stream) too
    r = sse_status(f"{url}/stream?token={token(auth_gateway)}")
    assert r.status == 200 and r.events[0].data["stream"] == "cam", r
    # given the key in a header (a non-browser client)
    r = sse_status(f"{url}/streams/cam/events", headers={"Authorization": f"Bearer {KEYS[1]}"})
    assert r.status == 200 and r.events, r


def test_expired_forged_and_foreign_tokens_are_refused(auth_gateway: GatewayProcess) -> None:
    url = f"{auth_gateway.url}/streams/cam/events"
    same_keys = AuthSettings(api_keys=KEYS)
    # given a token another replica with the same keys signed: accepted (the signing key is derived)
    r = sse_status(f"{url}?token={Authenticator(same_keys).issue('cam').token}")
    assert r.status == 200 and r.events, r
    refused = {
        "expired": Authenticator(same_keys, clock=lambda: time.time() - 3600).issue("cam").token,
        "another stream": token(auth_gateway, "other"),
        "other keys": Authenticator(AuthSettings(api_keys=("other-key-0123456789abc",))).issue("cam").token,
        "garbage": "garbage",
        "empty": "",
    }
    for what, bad in refused.items():
        answer = httpx.get(url, params={"token": bad}, timeout=10)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized", (what, answer.text)


def test_cors_preflight_allows_the_configured_origin_and_the_key_headers(auth_gateway: GatewayProcess) -> None:
    def preflight(origin: str) -> httpx.Response:
        headers = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, x-api-key",
        }
        return httpx.options(f"{auth_gateway.url}/predict", headers=headers)

    ok = preflight(ORIGIN)
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN, ok.headers
    assert ok.headers["access-control-allow-credentials"] == "true"
    allowed = {h.strip().lower() for h in ok.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "x-api-key", "content-type", "last-event-id"} <= allowed
    assert "access-control-allow-origin" not in preflight("http://evil.test").headers


def test_no_key_and_no_token_in_the_log(auth_gateway: GatewayProcess) -> None:
    # given requests with each key, a refused one, and a stream opened with a token (sent here,
    # so the check never depends on what ran before)
    url = auth_gateway.url
    for key in KEYS:
        assert httpx.get(f"{url}/streams", headers={"X-API-Key": key}).status_code == 200
    assert httpx.get(f"{url}/streams", headers={"X-API-Key": KEYS[0] + "-no"}).status_code == 401
    sse_token = token(auth_gateway, "cam")
    assert sse_status(f"{url}/streams/cam/events?token={sse_token}").status == 200
    # then the gateway's whole log (every test's requests included) holds neither
    log = auth_gateway.log()
    assert "token=***" in log, "the access log, which this test reads, shows the SSE request masked"
    for secret in (*KEYS, sse_token, sse_token.split(".")[1]):
        assert secret not in log, "a credential reached the log"
