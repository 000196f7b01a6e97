"""API keys, SSE tokens and the settings behind them: constant-time checks, signed expiring
tokens, and configuration errors that name the field but never print a key."""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import traceback
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api.auth import REDACT_TOKENS, Authenticator
from gateway.config import AuthSettings, Settings, load_settings
from gateway.errors import ConfigError
from gateway.main import create_app

KEYS = ("first-key-0123456789abcdef", "second-key-0123456789abcdef")
NOW = 1_800_000_000.0


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def authenticator(keys: tuple[str, ...] = KEYS, clock: Clock | None = None, **kw: Any) -> Authenticator:
    return Authenticator(AuthSettings(api_keys=keys, **kw), clock=clock or Clock())


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("APP_"):
            monkeypatch.delenv(key)


# --- keys ----------------------------------------------------------------------------------------


def test_every_configured_key_is_accepted_and_nothing_else() -> None:
    a = authenticator()
    assert a.enabled and all(a.key_ok(k) for k in KEYS)
    for wrong in (None, "", KEYS[0][:-1], KEYS[0] + "x", KEYS[0].upper(), f" {KEYS[0]}"):
        assert not a.key_ok(wrong), f"{wrong!r} must be refused"


def test_without_keys_authentication_is_off_and_accepts_no_key() -> None:
    a = authenticator(keys=())
    assert not a.enabled
    assert not a.key_ok("") and not a.key_ok(None), "off means the guards skip the check, not that any key is valid"


@pytest.mark.parametrize("presented", [KEYS[0], KEYS[1], "wrong-key-0123456789abcdef", None])
def test_a_key_is_compared_with_every_key_in_constant_time(monkeypatch: pytest.MonkeyPatch, presented: str) -> None:
    # given a compare_digest that records its calls
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)  # what gateway.api.auth calls
    a = authenticator(keys=(*KEYS, "third-key-0123456789abcdef"))
    # when a key is checked: the first key, a later one, a wrong one, none
    a.key_ok(presented)
    # then every configured key was compared (no early exit), each as two digests of equal length
    assert calls == [(32, 32)] * 3, calls


# --- tokens --------------------------------------------------------------------------------------


def test_a_token_is_accepted_until_it_expires() -> None:
    clock = Clock()
    a = authenticator(clock=clock, token_ttl_s=60)
    issued = a.issue()
    assert issued.expires_at == int(NOW) + 60 and issued.stream is None
    assert a.token_ok(issued.token, None) and a.token_ok(issued.token, "any-stream")
    clock.t = NOW + 59.9
    assert a.token_ok(issued.token, "cam")
    clock.t = NOW + 60
    assert not a.token_ok(issued.token, "cam"), "expired"


def test_a_scoped_token_opens_only_its_stream() -> None:
    a = authenticator()
    token = a.issue("lobby").token
    assert a.token_ok(token, "lobby")
    assert not a.token_ok(token, "dock") and not a.token_ok(token, None), "another stream, or /stream"


def _swap_payload(token: str, payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode() + "." + token.split(".")[1]


def test_a_tampered_token_is_refused() -> None:
    a = authenticator()
    token = a.issue("lobby").token
    body, mac = token.split(".")
    forged = {
        "a later expiry": _swap_payload(token, f"{int(NOW) + 10**6}:lobby".encode()),
        "another stream": _swap_payload(token, f"{int(NOW) + 300}:dock".encode()),
        "no scope": _swap_payload(token, f"{int(NOW) + 300}:".encode()),
        "a flipped MAC": f"{body}.{mac[:-2]}{'A' if mac[-2] != 'A' else 'B'}{mac[-1]}",
        "no MAC": body,
        "garbage": "not-a-token",
        "padding": f"{body}.{mac}=",
        "too long": "A" * 129 + "." + mac,
        "non-ASCII": f"{body}é.{mac}",
    }
    for what, bad in forged.items():
        assert not a.token_ok(bad, "lobby"), what
    assert a.token_ok(token, "lobby"), "the genuine token still works"


def test_replicas_with_the_same_keys_accept_each_others_tokens() -> None:
    # given two replicas configured with the same keys, in any order
    token = authenticator(keys=KEYS).issue().token
    assert authenticator(keys=tuple(reversed(KEYS))).token_ok(token, None)
    # and a deployment with other keys, or an explicit secret, does not
    assert not authenticator(keys=(KEYS[0],)).token_ok(token, None)
    secret = "s" * 32
    signed = authenticator(token_secret=secret).issue().token
    assert not authenticator().token_ok(signed, None)
    assert authenticator(keys=("other-key-0123456789abcdef",), token_secret=secret).token_ok(signed, None), (
        "with token_secret, the secret alone decides"
    )


def test_the_access_log_never_shows_a_token() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/streams/a/events?x=1&token=SECRET.MAC&y=2", "1.1", 200), None,
    )  # fmt: skip
    assert REDACT_TOKENS.filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "GET /streams/a/events?x=1&token=***&y=2 HTTP/1.1" 200'


# --- settings ------------------------------------------------------------------------------------


def _config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as e:
        load_settings()
    return "".join(traceback.format_exception(e.value))  # the cause chain too, as uvicorn would print it


@pytest.mark.parametrize(
    "value",
    [
        '["SECRET-SHORT"]',  # 12 characters
        '["SECRET-LONG-0123456789", "SECRET WITH A SPACE 0123456789"]',
        "SECRET-LONG-0123456789, SECRET-TOO",  # a file's comma-separated keys
        '["SECRET' + "X" * 513 + '"]',
        '["SECRET-LONG-0123456789", 7',  # malformed JSON
    ],
)
def test_a_bad_key_is_named_but_never_printed(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    message = _config_error(monkeypatch, APP_AUTH__API_KEYS=value)
    assert "auth.api_keys" in message and "APP_AUTH__API_KEYS" in message, message
    assert "SECRET" not in message, f"a key leaked: {message}"


def test_a_short_token_secret_or_a_misspelt_key_is_never_printed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    message = _config_error(monkeypatch, APP_AUTH__TOKEN_SECRET="tiny-secret-value")
    assert "auth.token_secret" in message and "tiny-secret-value" not in message, message
    config = tmp_path / "config.yaml"
    config.write_text(f"auth:\n  api_key: {KEYS[0]}\n")  # api_key for api_keys
    message = _config_error(monkeypatch, APP_CONFIG=str(config))
    assert "auth.api_key" in message and KEYS[0] not in message, message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f'["{KEYS[0]}", "{KEYS[1]}"]\n', KEYS),
        (f"{KEYS[0]}\n", KEYS[:1]),
        (f"{KEYS[0]}\n{KEYS[1]}\n", KEYS),
        (f"{KEYS[0]}, {KEYS[1]}", KEYS),
    ],
)
def test_keys_from_a_secret_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str, expected: tuple[str, ...]
) -> None:
    # given the file Docker or Kubernetes mounts: a JSON list, one plain key, or keys a line or a comma apart
    (tmp_path / "app_auth__api_keys").write_text(content)
    monkeypatch.setenv("APP_SECRETS_DIR", str(tmp_path))
    keys = load_settings().auth.api_keys
    assert tuple(k.get_secret_value() for k in keys) == expected
    assert KEYS[0] not in repr(keys), "SecretStr hides the keys"


def test_wildcard_origin_with_credentials_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _config_error(monkeypatch, APP_CORS_ORIGINS='["*"]', APP_CORS_ALLOW_CREDENTIALS="true")
    assert "cors_allow_credentials" in message and "cors_origins" in message, message
    monkeypatch.setenv("APP_CORS_ORIGINS", '["https://app.example.com"]')
    assert load_settings().cors_allow_credentials, "an explicit origin may get credentials"


@pytest.mark.parametrize("origin", ["https://a.test/", "a.test", "https://a.test/path", "http://a.test:port", "*.test"])
def test_an_origin_must_be_scheme_host_port(monkeypatch: pytest.MonkeyPatch, origin: str) -> None:
    message = _config_error(monkeypatch, APP_CORS_ORIGINS=f'["{origin}"]')
    assert "cors_origins" in message, message


def test_origins_that_are_valid() -> None:
    origins = ["*", "http://localhost:5173", "HTTPS://App.Example.com", "http://[::1]:8080", "http://10.0.0.1"]
    s = Settings(cors_origins=origins)
    assert s.cors_origins == ("*", "http://localhost:5173", "https://app.example.com", "http://[::1]:8080",
                              "http://10.0.0.1"), "lower case, as browsers send them"  # fmt: skip


# --- the app -------------------------------------------------------------------------------------


def _call(settings: Settings, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request to the app in process (no lifespan: the guards run before anything it creates)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())


ON = Settings(auth=AuthSettings(api_keys=KEYS))


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/predict"), ("GET", "/streams"), ("POST", "/streams"), ("DELETE", "/streams/a"),
     ("GET", "/stream"), ("GET", "/streams/a/events"), ("POST", "/auth/token")],
)  # fmt: skip
def test_protected_routes_answer_401_with_the_error_body(method: str, path: str) -> None:
    for headers in ({}, {"X-API-Key": "wrong-key-0123456789abcdef"}, {"Authorization": f"Basic {KEYS[0]}"}):
        r = _call(ON, method, path, headers=headers)
        assert r.status_code == 401, (method, path, headers, r.status_code)
        assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"


def test_a_token_comes_with_the_key_and_is_not_cached() -> None:
    r = _call(ON, "POST", "/auth/token?stream=lobby", headers={"Authorization": f"Bearer {KEYS[1]}"})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store", r.text
    body = r.json()
    assert body["stream"] == "lobby" and Authenticator(ON.auth).token_ok(body["token"], "lobby")


def test_the_document_declares_authentication_only_when_it_is_on() -> None:
    doc = _call(ON, "GET", "/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"ApiKeyBearer", "ApiKeyHeader", "SseToken"}
    paths = doc["paths"]
    key: list[dict[str, list[str]]] = [{"ApiKeyBearer": []}, {"ApiKeyHeader": []}]
    for path, method in [("/predict", "post"), ("/streams", "get"), ("/streams", "post"),
                         ("/streams/{sid}", "delete"), ("/auth/token", "post")]:  # fmt: skip
        assert paths[path][method]["security"] == key, (path, method)
        assert "401" in paths[path][method]["responses"], (path, method)
    for sse in ("/stream", "/streams/{sid}/events"):
        assert paths[sse]["get"]["security"] == [*key, {"SseToken": []}]
    for open_path in ("/health", "/health/ready", "/health/stream", "/metrics"):
        assert "security" not in paths[open_path]["get"], open_path
    # and without keys nothing is declared (Schemathesis checks that declared auth is enforced)
    off = _call(Settings(), "GET", "/openapi.json").json()
    assert "securitySchemes" not in off["components"]
    assert not [p for p, ops in off["paths"].items() for op in ops.values() if "security" in op]
