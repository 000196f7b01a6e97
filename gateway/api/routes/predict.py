"""``POST /predict``: one image in, top-k classes and timings out."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from gateway.api.deps import PredictorDep, SettingsDep
from gateway.api.uploads import read_image_upload
from gateway.errors import BadRequest

router = APIRouter(tags=["predict"])


class ClassScore(BaseModel):
    index: int = Field(description="Class index in the model's label file.")
    label: str = Field(description="Class name.")
    probability: float = Field(description="Softmax probability.")


class Timings(BaseModel):
    decode: float = Field(description="Image decode, ms.")
    preprocess: float = Field(description="Resize, crop and layout, ms.")
    inference: float = Field(description="Triton round trip, ms.")
    total: float = Field(description="From the first byte read to the answer, ms.")


class ImageSize(BaseModel):
    width: int
    height: int


class PredictResponse(BaseModel):
    model: str
    model_version: str
    predictions: list[ClassScore] = Field(description="Top-k classes, most probable first.")
    image: ImageSize
    timings_ms: Timings


_ERRORS = {
    400: {"description": "Not an image, truncated, empty, or a bad field."},
    404: {"description": "Unknown model."},
    413: {"description": "Larger than upload.max_bytes or upload.max_pixels."},
    415: {"description": "Not multipart/form-data or a raw JPEG/PNG/WebP body, or an unsupported image format."},
    503: {"description": "Triton is down or timed out; retry after the Retry-After header."},
}


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=_ERRORS,  # type: ignore[arg-type]
    summary="Classify one image (multipart field `image`, or a raw image body).",
)
async def predict(
    request: Request,
    settings: SettingsDep,
    predictor: PredictorDep,
    top_k: int | None = Query(None, ge=1, le=100, description="Classes to return (default: top_k setting)."),
    model: str | None = Query(None, min_length=1, max_length=128, description="Triton model (default: model setting)."),
) -> PredictResponse:
    t0 = time.perf_counter()
    upload = await read_image_upload(request, max_bytes=settings.upload.max_bytes)
    k = top_k
    if k is None and "top_k" in upload.fields:
        raw = upload.fields["top_k"]
        if not raw.isdigit() or not 1 <= int(raw) <= 100:
            raise BadRequest(f"top_k must be an integer from 1 to 100, got {raw!r}")
        k = int(raw)
    p = await predictor.predict(upload.data, model=model or upload.fields.get("model") or None, top_k=k)
    return PredictResponse(
        model=p.model.name,
        model_version=p.model.version,
        predictions=[ClassScore(index=c.index, label=c.label, probability=c.probability) for c in p.classes],
        image=ImageSize(width=p.width, height=p.height),
        timings_ms=Timings(
            decode=round(p.decode_ms, 3),
            preprocess=round(p.preprocess_ms, 3),
            inference=round(p.inference_ms, 3),
            total=round((time.perf_counter() - t0) * 1000, 3),
        ),
    )
