"""Liveness (never calls Triton) and readiness (Triton and every configured model)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.api.deps import CatalogDep, ClientDep, ClusterDep, PredictorDep, SettingsDep, StreamsDep
from gateway.errors import GatewayError
from gateway.inference.catalog import ModelCatalog
from gateway.inference.predictor import Predictor
from gateway.schema import Components, Liveness, ModelReadiness, Readiness, TritonReadiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Liveness, summary="Liveness: the process is up. Never calls Triton.")
async def health(request: Request, cluster: ClusterDep) -> Liveness:
    return Liveness(
        uptime_s=round(time.monotonic() - request.app.state.started_at, 3),
        cluster=cluster.health() if cluster is not None else None,
    )


@router.get(
    "/health/ready",
    response_model=Readiness,
    summary="Readiness: 200 when Triton and every configured model are ready, 503 otherwise (and from the "
    "moment the gateway is asked to stop).",
    responses={503: {"model": Readiness, "description": "Triton or a model is not ready; the body says which."}},
)
async def ready(  # noqa: PLR0917 - FastAPI dependencies
    settings: SettingsDep,
    client: ClientDep,
    catalog: CatalogDep,
    predictor: PredictorDep,
    streams: StreamsDep,
    cluster: ClusterDep,
) -> JSONResponse:
    names = list(dict.fromkeys([settings.model, *(s.model for s in settings.all_streams() if s.model)]))
    server_ok, *models_ok = await asyncio.gather(client.server_ready(), *(client.model_ready(n) for n in names))
    entries = await asyncio.gather(
        *(_model(n, ok, settings.device, catalog, predictor) for n, ok in zip(names, models_ok, strict=True))
    )
    models = dict(zip(names, entries, strict=True))
    is_ready = bool(server_ok) and all(m.ready for m in models.values()) and not streams.draining
    body = Readiness(
        ready=is_ready,
        shutting_down=streams.draining,
        components=Components(
            triton=TritonReadiness(ready=bool(server_ok), url=settings.triton.url),
            models=models,
            cluster=cluster.health() if cluster is not None else None,
        ),
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if is_ready else 503)


async def _model(name: str, ok: bool, device: str, catalog: ModelCatalog, predictor: Predictor) -> ModelReadiness:
    if not ok:
        return ModelReadiness(ready=False)
    try:
        info = await catalog.refresh(name)
        if catalog.degraded(name) is not None:
            await predictor.probe(name)  # a crashed instance: ready again once an inference succeeds
    except GatewayError as e:
        return ModelReadiness(ready=False, error=e.message)
    warning = None
    if device.upper() not in info.instance_kinds:
        warning = f"device is {device} but the model runs on {list(info.instance_kinds)}"
    return ModelReadiness(
        ready=True,
        version=info.version,
        input=f"{info.input_datatype}{list(info.input_shape)}",
        instances=list(info.instance_kinds),
        warning=warning,
    )
