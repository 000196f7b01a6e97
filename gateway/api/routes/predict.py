"""``POST /predict``: one image in; top-k classes (classifier) or person / no_person
with boxes (detector), and timings, out.

The route is on the hot path of every upload, so it avoids FastAPI's per-parameter
machinery: the four options are read by ``_options`` (one function for the query and
the form fields, documented from one table), the key is checked by ``check_key`` (the
same guard as ``KEY_REQUIRED``, its security declared in the document by hand) and the
lifespan's objects are read from the app's state, not solved as dependencies, and the
answer is serialized once by pydantic, not validated again by FastAPI
(``response_model`` still documents it).  An admitted request reaches this function
past Starlette's router and FastAPI's route wrappers, from ``HotRoute`` (hot_route.py).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError

from gateway.api.auth import KEY_SECURITY, check_key
from gateway.api.errors import responses
from gateway.api.timing import PREDICTED_MODEL
from gateway.api.uploads import IMAGE_FIELD, OCTET_STREAM, read_image_upload
from gateway.config import Settings
from gateway.errors import BadRequest
from gateway.inference.predictor import Predictor
from gateway.parsing import ascii_digits, parse_bool
from gateway.schema import MODEL_NAME_PATTERN, PredictResponse, Timings, predict_response

router = APIRouter(tags=["predict"])

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
_BINARY = {"type": "string", "format": "binary"}
_OPTIONS: dict[str, dict[str, Any]] = {
    "top_k": {"type": "integer", "minimum": 1, "maximum": 100, "description": "Classes to return."},
    "model": {"type": "string", "pattern": MODEL_NAME_PATTERN, "description": "Triton model."},
    "threshold": {"type": "number", "minimum": 0, "maximum": 1, "description": "Detector: box score threshold."},
    "all_classes": {"type": "boolean", "description": "Detector: boxes of every class, not only persons."},
}
_QUERY_DEFAULTS = {
    "top_k": "the top_k setting",
    "model": "the model setting; mobilenet_v3_small or person_detector",
    "threshold": "detector.score_threshold",
    "all_classes": "detector.all_classes",
}
PARAMETERS = [
    {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"{schema['description'][:-1]} (default: {_QUERY_DEFAULTS[name]}); overrides the form field.",
        "schema": {k: v for k, v in schema.items() if k != "description"},
    }
    for name, schema in _OPTIONS.items()
]
REQUEST_BODY = {
    "required": True,
    "description": "The image: a multipart form with the file in `image` (and optional fields, overridden by "
    "the query parameters of the same name), or the raw image as the body (JPEG, PNG or WebP; with "
    "application/octet-stream the format is told from the bytes).",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [IMAGE_FIELD],
                "properties": {IMAGE_FIELD: {**_BINARY, "description": "JPEG, PNG or WebP."}, **_OPTIONS},
            },
            "encoding": {IMAGE_FIELD: {"contentType": ", ".join(IMAGE_TYPES)}},
        },
        **{media: {"schema": _BINARY} for media in (*IMAGE_TYPES, OCTET_STREAM)},
    },
}
Invalid = Callable[[str, str], Exception]  # (option, message) -> the error to raise


def _query_error(name: str, message: str) -> RequestValidationError:
    """422 ``invalid_request``, as FastAPI answers for a query parameter out of range."""
    return RequestValidationError([{"type": "value_error", "loc": ("query", name), "msg": message}])


def _form_error(name: str, message: str) -> BadRequest:
    return BadRequest(message)


def _options(fields: Mapping[str, str], invalid: Invalid) -> dict[str, Any]:
    """The options present in ``fields`` (the query string, or the form's text fields), validated
    against ``_OPTIONS``; a bad one raises ``invalid(name, message)``."""
    out: dict[str, Any] = {}
    if (raw := fields.get("top_k")) is not None:
        if not ascii_digits(raw) or not 1 <= int(raw) <= 100:
            raise invalid("top_k", f"top_k must be an integer from 1 to 100, got {raw!r}")
        out["top_k"] = int(raw)
    if (raw := fields.get("model")) is not None:
        if not re.fullmatch(MODEL_NAME_PATTERN, raw):
            raise invalid("model", f"model must match {MODEL_NAME_PATTERN}, got {raw!r}")
        out["model"] = raw
    if (raw := fields.get("threshold")) is not None:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 0 <= value <= 1:  # NaN fails too
            raise invalid("threshold", f"threshold must be a number from 0 to 1, got {raw!r}")
        out["threshold"] = value
    if (raw := fields.get("all_classes")) is not None:
        flag = parse_bool(raw)
        if flag is None:
            raise invalid("all_classes", f"all_classes must be true or false, got {raw!r}")
        out["all_classes"] = flag
    return out


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=responses(400, 401, 404, 413, 415, 422, 502, 503),
    openapi_extra={"parameters": PARAMETERS, "requestBody": REQUEST_BODY, "security": KEY_SECURITY},
    summary="Classify one image, or detect persons in it (multipart field `image`, or a raw image body).",
)
async def predict(request: Request) -> Response:
    t0 = time.perf_counter()
    await check_key(request)  # before the upload is read
    settings: Settings = request.app.state.settings
    query = _options(request.query_params, _query_error)  # 422 before the upload is read
    upload = await read_image_upload(request, max_bytes=settings.upload.max_bytes)
    options = {**_options(upload.fields, _form_error), **query} if upload.fields else query
    predictor: Predictor = request.app.state.predictor
    out = await predictor.predict(
        upload.data,
        model=options.get("model"),
        top_k=options.get("top_k"),
        options=predictor.options(options.get("threshold"), options.get("all_classes")),
    )
    setattr(request.state, PREDICTED_MODEL, out.result.model)
    timings = Timings(
        decode=round(out.decode_ms, 3),
        preprocess=round(out.preprocess_ms, 3),
        inference=round(out.inference_ms, 3),
        total=round((time.perf_counter() - t0) * 1000, 3),
    )
    # Built and validated as the typed model; FastAPI would validate it again before serializing it.
    body = predict_response(out.result, timings).model_dump_json(by_alias=True)
    return Response(body.encode(), media_type="application/json")
