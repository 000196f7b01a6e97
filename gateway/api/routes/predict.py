"""``POST /predict``: one image in; top-k classes (classifier) or person / no_person
with boxes (detector) and timings out."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from gateway.api.deps import PredictorDep, SettingsDep
from gateway.api.timing import PREDICTED_MODEL
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
    task: Literal["classification"] = "classification"
    predictions: list[ClassScore] = Field(description="Top-k classes, most probable first.")
    image: ImageSize
    timings_ms: Timings


class BoxOut(BaseModel):
    x1: float = Field(description="Left, in pixels of the image sent.")
    y1: float = Field(description="Top, in pixels of the image sent.")
    x2: float = Field(description="Right, in pixels of the image sent.")
    y2: float = Field(description="Bottom, in pixels of the image sent.")
    score: float
    label: str = Field(description="COCO class name (person unless all_classes).")


class DetectResponse(BaseModel):
    model: str
    model_version: str
    task: Literal["detection"] = "detection"
    label: Literal["person", "no_person"] = Field(description="person if any person box scores >= threshold.")
    person_count: int = Field(description="Person boxes at or above the threshold.")
    threshold: float
    boxes: list[BoxOut] = Field(description="Best first, in the coordinates of the image sent.")
    image: ImageSize
    timings_ms: Timings


_ERRORS = {
    400: {"description": "Not an image, truncated, empty, or a bad field."},
    404: {"description": "Unknown model (the message names it)."},
    413: {"description": "Larger than upload.max_bytes or upload.max_pixels."},
    415: {"description": "Not multipart/form-data or a raw JPEG/PNG/WebP body, or an unsupported image format."},
    503: {"description": "Triton is down or timed out; retry after the Retry-After header."},
}


@router.post(
    "/predict",
    response_model=PredictResponse | DetectResponse,
    responses=_ERRORS,  # type: ignore[arg-type]
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
        min_length=1,
        max_length=128,
        description="Triton model: mobilenet_v3_small or person_detector (default: model setting).",
    ),
    threshold: float | None = Query(
        None, ge=0, le=1, description="Detector: box score threshold (default: detector.score_threshold)."
    ),
    all_classes: bool | None = Query(
        None, description="Detector: boxes of every COCO class, not only persons (default: detector.all_classes)."
    ),
) -> PredictResponse | DetectResponse:
    t0 = time.perf_counter()
    upload = await read_image_upload(request, max_bytes=settings.upload.max_bytes)
    k = top_k
    if k is None and "top_k" in upload.fields:
        raw = upload.fields["top_k"]
        if not raw.isdigit() or not 1 <= int(raw) <= 100:
            raise BadRequest(f"top_k must be an integer from 1 to 100, got {raw!r}")
        k = int(raw)
    p = await predictor.predict(
        upload.data,
        model=model or upload.fields.get("model") or None,
        top_k=k,
        options=predictor.options(threshold, all_classes),
    )
    setattr(request.state, PREDICTED_MODEL, p.model.name)
    timings = Timings(
        decode=round(p.decode_ms, 3),
        preprocess=round(p.preprocess_ms, 3),
        inference=round(p.inference_ms, 3),
        total=round((time.perf_counter() - t0) * 1000, 3),
    )
    if p.detection is not None:
        d = p.detection
        return DetectResponse(
            model=p.model.name,
            model_version=p.model.version,
            label=d.label,
            person_count=d.person_count,
            threshold=d.threshold,
            boxes=[BoxOut(x1=b.x1, y1=b.y1, x2=b.x2, y2=b.y2, score=b.score, label=b.label) for b in d.boxes],
            image=ImageSize(width=p.width, height=p.height),
            timings_ms=timings,
        )
    return PredictResponse(
        model=p.model.name,
        model_version=p.model.version,
        predictions=[ClassScore(index=c.index, label=c.label, probability=c.probability) for c in p.classes],
        image=ImageSize(width=p.width, height=p.height),
        timings_ms=timings,
    )
