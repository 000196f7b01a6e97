"""``POST /auth/token``: an API key in, a short-lived SSE token out (``EventSource`` sends no headers)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from gateway.api.auth import KEY_REQUIRED, AuthDep
from gateway.api.errors import responses
from gateway.schema import STREAM_ID_PATTERN, SseToken

router = APIRouter(tags=["auth"])


@router.post(
    "/auth/token",
    response_model=SseToken,
    responses=responses(401, 422),
    dependencies=[KEY_REQUIRED],
    summary="A token for ?token= on the SSE routes, valid for auth.token_ttl_s (send the API key).",
)
async def issue_token(
    response: Response,
    auth: AuthDep,
    stream: str | None = Query(
        None,
        pattern=STREAM_ID_PATTERN,
        description="Limit the token to GET /streams/{stream}/events (default: every stream, and GET /stream).",
    ),
) -> SseToken:
    response.headers["Cache-Control"] = "no-store"  # a credential: no cache keeps it
    return auth.issue(stream)
