"""``POST /predict``: one image in; top-k classes (classifier) or person / no_person
with boxes (detector), and timings, out."""

from __future__ import annotations

import math
import re
import time
from typing import Any

from fastapi import APIRouter, Query, Request

from gateway.api.auth import KEY_REQUIRED
from gateway.api.deps import PredictorDep, SettingsDep
from gateway.api.errors import responses
from gateway.api.timing import PREDICTED_MODEL
from gateway.api.uploads import IMAGE_FIELD, OCTET_STREAM, read_image_upload
from gateway.errors import BadRequest
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


def _form_options(fields: dict[str, str]) -> dict[str, Any]:
    """The optional form fields, validated as the query parameters are."""
    out: dict[str, Any] = {}
    if "top_k" in fields:
        raw = fields["top_k"]
        if not ascii_digits(raw) or not 1 <= int(raw) <= 100:
            raise BadRequest(f"top_k must be an integer from 1 to 100, got {raw!r}")
        out["top_k"] = int(raw)
    if "model" in fields:
        if not re.fullmatch(MODEL_NAME_PATTERN, fields["model"]):
            raise BadRequest(f"model must match {MODEL_NAME_PATTERN}, got {fields['model']!r}")
        out["model"] = fields["model"]
    if "threshold" in fields:
        try:
            value = float(fields["threshold"])
        except ValueError:
            value = math.nan
        if not 0 <= value <= 1:  # NaN fails too
            raise BadRequest(f"threshold must be a number from 0 to 1, got {fields['threshold']!r}")
        out["threshold"] = value
    if "all_classes" in fields:
        flag = parse_bool(fields["all_classes"])
        if flag is None:
            raise BadRequest(f"all_classes must be true or false, got {fields['all_classes']!r}")
        out["all_classes"] = flag
    return out


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=responses(400, 401, 404, 413, 415, 422, 502, 503),
    dependencies=[KEY_REQUIRED],  # before the upload is read
    openapi_extra={"requestBody": REQUEST_BODY},
    summary="Classify one image, or detect persons in it (multipart field `image`, or a raw image body).",
)
async def predict(
    request: Request,
    *,
    settings: SettingsDep,
    predictor: PredictorDep,
    top_k: int | None = Query(None, ge=1, le=100, description="Classes to return (default: top_k setting)."),
    model: str | None = Query(
        None,
        pattern=MODEL_NAME_PATTERN,
        description="Triton model: mobilenet_v3_small or person_detector (default: model setting).",
    ),
    threshold: float | None = Query(
        None, ge=0, le=1, description="Detector: box score threshold (default: detector.score_threshold)."
    ),
    all_classes: bool | None = Query(
        None, description="Detector: boxes of every COCO class, not only persons (default: detector.all_classes)."
    ),
) -> PredictResponse:
    t0 = time.perf_counter()
    upload = await read_image_upload(request, max_bytes=settings.upload.max_bytes)
    form = _form_options(upload.fields)
    out = await predictor.predict(
        upload.data,
        model=model or form.get("model"),
        top_k=top_k or form.get("top_k"),
        options=predictor.options(
            threshold if threshold is not None else form.get("threshold"),
            all_classes if all_classes is not None else form.get("all_classes"),
        ),
    )
    setattr(request.state, PREDICTED_MODEL, out.result.model)
    timings = Timings(
        decode=round(out.decode_ms, 3),
        preprocess=round(out.preprocess_ms, 3),
        inference=round(out.inference_ms, 3),
        total=round((time.perf_counter() - t0) * 1000, 3),
    )
    return predict_response(out.result, timings)
