"""Liveness (never calls Triton) and readiness (Triton and every configured model)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.api.deps import ClientDep, PredictorDep, SettingsDep
from gateway.errors import GatewayError

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process is up. Never calls Triton.")
async def health(request: Request) -> dict[str, Any]:
    return {"status": "ok", "uptime_s": round(time.monotonic() - request.app.state.started_at, 3)}


@router.get(
    "/health/ready",
    summary="Readiness: 200 when Triton and every configured model are ready, 503 otherwise.",
    responses={503: {"description": "Triton or a model is not ready; the body says which."}},
)
async def ready(settings: SettingsDep, client: ClientDep, predictor: PredictorDep) -> JSONResponse:
    names = list(dict.fromkeys([settings.model, *(s.model for s in settings.all_streams() if s.model)]))
    server_ok, *models_ok = await asyncio.gather(client.server_ready(), *(client.model_ready(n) for n in names))
    models: dict[str, dict[str, Any]] = {}
    for name, ok in zip(names, models_ok, strict=True):
        entry: dict[str, Any] = {"ready": bool(ok)}
        if ok:
            try:
                info = await predictor.refresh(name)
                entry.update(
                    version=info.version,
                    input=f"{info.input_datatype}{list(info.input_shape)}",
                    instances=list(info.instance_kinds),
                )
                if settings.device.upper() not in info.instance_kinds:
                    entry["warning"] = f"device is {settings.device} but the model runs on {list(info.instance_kinds)}"
            except GatewayError as e:
                entry.update(ready=False, error=e.message)
        models[name] = entry
    is_ready = bool(server_ok) and all(m["ready"] for m in models.values())
    body = {
        "ready": is_ready,
        "components": {"triton": {"ready": bool(server_ok), "url": settings.triton.url}, "models": models},
    }
    return JSONResponse(body, status_code=200 if is_ready else 503)
