"""``GET /cluster``: this gateway's view of the cluster (cluster mode only)."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.auth import KEY_REQUIRED
from gateway.api.deps import ClusterDep
from gateway.api.errors import responses
from gateway.errors import NotClustered
from gateway.schema import ClusterStatus

router = APIRouter(tags=["cluster"])


@router.get(
    "/cluster",
    response_model=ClusterStatus,
    responses=responses(401, 404),
    dependencies=[KEY_REQUIRED],
    summary="Cluster mode: this gateway's id and state, the live gateways, the streams it runs and its recent "
    "stream runs (404 for a gateway on its own).",
)
async def cluster_status(cluster: ClusterDep) -> ClusterStatus:
    if cluster is None:
        raise NotClustered("this gateway runs on its own: set cluster.redis_url for cluster mode")
    return cluster.status()
