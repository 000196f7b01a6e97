"""Typed dependencies: routes receive the lifespan's objects, never globals.

``async def`` on purpose: a plain ``def`` dependency costs a worker-thread hop per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.cluster.node import ClusterNode
from gateway.config import Settings
from gateway.inference.catalog import ModelCatalog
from gateway.inference.client import TritonClient
from gateway.inference.predictor import Predictor
from gateway.streams.manager import StreamManager


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_client(request: Request) -> TritonClient:
    client: TritonClient = request.app.state.triton
    return client


async def get_catalog(request: Request) -> ModelCatalog:
    catalog: ModelCatalog = request.app.state.catalog
    return catalog


async def get_predictor(request: Request) -> Predictor:
    predictor: Predictor = request.app.state.predictor
    return predictor


async def get_streams(request: Request) -> StreamManager:
    streams: StreamManager = request.app.state.streams
    return streams


async def get_cluster(request: Request) -> ClusterNode | None:
    """The cluster node in cluster mode (cluster.redis_url), else None."""
    cluster: ClusterNode | None = getattr(request.app.state, "cluster", None)
    return cluster


SettingsDep = Annotated[Settings, Depends(get_settings)]
ClientDep = Annotated[TritonClient, Depends(get_client)]
CatalogDep = Annotated[ModelCatalog, Depends(get_catalog)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
StreamsDep = Annotated[StreamManager, Depends(get_streams)]
ClusterDep = Annotated[ClusterNode | None, Depends(get_cluster)]
