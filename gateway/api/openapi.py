"""The OpenAPI document: what FastAPI derives from the routes, plus what it cannot know.

- The SSE event models (``PredictionEvent``, ``StatusEvent``) in ``components``, and
  on each SSE operation as ``x-sse-events`` (event name → schema of its ``data``).
- ``StreamCreate.url``'s pattern: this gateway's ``stream_policy`` as one regular
  expression (the same one ``POST /streams`` applies), so what the document calls
  valid is what the gateway accepts.
- Links from ``POST /streams`` to the operations on the stream it created, for
  clients and for stateful testing.
- Authentication only where it is on: FastAPI declares the security schemes of
  ``gateway.api.auth`` (the key as a bearer token or in ``X-API-Key``; ``?token=`` on the
  SSE routes) on the operations that read them; without ``auth.api_keys`` nothing is
  demanded, so nothing is declared.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from gateway.config import Settings
from gateway.schema import PredictionEvent, StatusEvent
from gateway.streams.policy import url_pattern

SSE_PATHS = ("/stream", "/streams/{sid}/events")
FEED_PATH = "/events"  # every stream's status events
REF = "#/components/schemas/{model}"


def _add_schema(schemas: dict[str, Any], name: str, adapter: TypeAdapter[Any]) -> None:
    schema = adapter.json_schema(ref_template=REF, mode="serialization")
    schemas.update(schema.pop("$defs", {}))
    schemas.setdefault(name, schema)


def build(app: FastAPI, settings: Settings) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    _add_schema(schemas, "PredictionEvent", TypeAdapter(PredictionEvent))
    _add_schema(schemas, "StatusEvent", TypeAdapter(StatusEvent))
    events = {name: {"$ref": REF.format(model=name)} for name in ("PredictionEvent", "StatusEvent")}
    for path in SSE_PATHS:
        doc["paths"][path]["get"]["x-sse-events"] = {
            "prediction": events["PredictionEvent"],
            "status": events["StatusEvent"],
        }
    doc["paths"][FEED_PATH]["get"]["x-sse-events"] = {"status": events["StatusEvent"]}
    schemas["StreamCreate"]["properties"]["url"]["pattern"] = url_pattern(settings.stream_policy)
    created = doc["paths"]["/streams"]["post"]["responses"]["201"]
    created["links"] = {
        "RemoveStream": {
            "operationId": "remove_stream",
            "parameters": {"sid": "$response.body#/id"},
            "description": "Remove the stream just created.",
        },
    }
    if not settings.auth.enabled:
        doc["components"].pop("securitySchemes", None)
        for operations in doc["paths"].values():
            for operation in operations.values():
                operation.pop("security", None)
    return doc


def install(app: FastAPI, settings: Settings) -> None:
    """Serve ``build``'s document (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
