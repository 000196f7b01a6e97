"""Who may call the gateway: API keys, and signed short-lived tokens for the SSE routes.

Authentication is on when ``auth.api_keys`` is set.  A client sends a key as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.  The presented key's SHA-256 is
compared with every configured key's, each with ``hmac.compare_digest`` and no early exit,
so the time taken tells neither how close a guess came nor which key matched.

A browser's ``EventSource`` cannot send headers, so the SSE routes also accept ``?token=``,
from ``POST /auth/token``: ``base64url("<expiry>:<stream>") "." base64url(HMAC-SHA256)``, the
expiry in Unix seconds, the stream empty for a token that opens every stream.  The signing
key is ``auth.token_secret`` or, by default, derived from the keys, so every replica with
the same keys accepts the others' tokens.  A token is checked when the stream is opened; an
open stream outlives it.

Keys are never logged (headers are not), and ``REDACT_TOKENS`` masks ``token=`` in
uvicorn's access log lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from gateway.config import AuthSettings
from gateway.errors import Unauthorized
from gateway.parsing import ascii_digits
from gateway.schema import SseToken

API_KEY_HEADER = "X-API-Key"
TOKEN_PARAM = "token"  # noqa: S105 - a parameter name
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}\.[A-Za-z0-9_-]{43}")  # payload . 32-byte MAC, unpadded base64url
_DERIVE = b"stream-ml/sse-token-key/v1"
_SIGN = b"stream-ml/sse-token/v1\x00"
NO_KEY = "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
BAD_TOKEN = "the token is invalid, expired or for another stream: get one from POST /auth/token"  # noqa: S105


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """Checks API keys and SSE tokens, and issues tokens; with no key set, ``enabled`` is false and the
    guards below let every request through."""

    def __init__(self, settings: AuthSettings, clock: Callable[[], float] = time.time) -> None:
        keys = sorted(k.get_secret_value().encode() for k in settings.api_keys)
        self.enabled = bool(keys)
        self.ttl_s = settings.token_ttl_s
        self._digests = [hashlib.sha256(k).digest() for k in keys]
        if settings.token_secret is not None:
            self._secret = settings.token_secret.get_secret_value().encode()
        else:  # keys are printable ASCII: NUL separates them unambiguously
            self._secret = hmac.new(_DERIVE, b"\x00".join(keys), hashlib.sha256).digest()
        self._clock = clock  # wall clock: tokens travel between replicas

    def key_ok(self, presented: str | None) -> bool:
        """Whether ``presented`` is one of the keys, compared with all of them in constant time."""
        digest = hashlib.sha256((presented or "").encode()).digest()
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(digest, known)
        return found and bool(presented)

    def issue(self, stream: str | None = None) -> SseToken:
        expires = int(self._clock()) + self.ttl_s
        payload = f"{expires}:{stream or ''}".encode()
        return SseToken(token=f"{_b64(payload)}.{_b64(self._sign(payload))}", expires_at=expires, stream=stream)

    def token_ok(self, token: str, stream: str | None) -> bool:
        """A token this deployment signed, not expired, and for ``stream`` (None: ``/stream``) or every stream."""
        if not _TOKEN.fullmatch(token):
            return False
        body, _, mac = token.partition(".")
        try:
            payload, signature = _unb64(body), _unb64(mac)
        except (binascii.Error, ValueError):
            return False
        if not hmac.compare_digest(signature, self._sign(payload)):
            return False
        expires, _, scope = payload.decode("ascii", "replace").partition(":")
        return ascii_digits(expires) and int(expires) > self._clock() and scope in ("", stream)

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, _SIGN + payload, hashlib.sha256).digest()


# FastAPI's security classes read the credentials, so the OpenAPI document declares them (generated
# clients and /docs' "Authorize" send the key); the guards below decide.  auto_error=False: a
# missing credential is not an error while auth is off.
_BEARER = HTTPBearer(auto_error=False, scheme_name="ApiKeyBearer", description="An API key (auth.api_keys).")
_HEADER = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, scheme_name="ApiKeyHeader", description="An API key.")
_QUERY = APIKeyQuery(
    name=TOKEN_PARAM,
    auto_error=False,
    scheme_name="SseToken",
    description="SSE routes only: a short-lived token from POST /auth/token (EventSource sends no headers).",
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
HeaderKeyDep = Annotated[str | None, Depends(_HEADER)]
QueryTokenDep = Annotated[str | None, Depends(_QUERY)]


async def get_auth(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


AuthDep = Annotated[Authenticator, Depends(get_auth)]


def _key(bearer: HTTPAuthorizationCredentials | None, header: str | None) -> str | None:
    return bearer.credentials if bearer is not None else header


async def require_key(auth: AuthDep, bearer: BearerDep, header: HeaderKeyDep) -> None:
    """Predictions, stream changes, the stream list and tokens: an API key when auth is on."""
    if auth.enabled and not auth.key_ok(_key(bearer, header)):
        raise Unauthorized(NO_KEY)


async def require_key_or_token(
    request: Request, auth: AuthDep, bearer: BearerDep, header: HeaderKeyDep, token: QueryTokenDep
) -> None:
    """The SSE routes: an API key, or ``?token=`` for this stream (``/stream``: an unscoped token)."""
    if not auth.enabled:
        return
    if token is not None and auth.token_ok(token, request.path_params.get("sid")):
        return
    if not auth.key_ok(_key(bearer, header)):
        raise Unauthorized(BAD_TOKEN if token is not None else NO_KEY)


KEY_REQUIRED = Depends(require_key)
KEY_OR_TOKEN_REQUIRED = Depends(require_key_or_token)
KEY_SECURITY: list[dict[str, list[str]]] = [
    {_BEARER.scheme_name: []},
    {_HEADER.scheme_name: []},
]  # what KEY_REQUIRED declares


async def check_key(request: Request) -> None:
    """``require_key`` called directly, for a route that declares ``KEY_SECURITY`` itself:
    ``POST /predict``, where FastAPI's solving of three dependencies cost ~0.35 ms a request."""
    await require_key(request.app.state.auth, await _BEARER(request), await _HEADER(request))


# --- logs ----------------------------------------------------------------------------------------


class _RedactTokens(logging.Filter):
    """Masks ``token=`` query values in a record's arguments (uvicorn's access log has the query)."""

    _QUERY = re.compile(r"([?&]token=)[^&\s#]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "token=" in a for a in record.args):
            record.args = tuple(self._QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


REDACT_TOKENS = _RedactTokens()  # stateless; one instance, so adding it twice to a logger is a no-op
