"""The one contract: a result has the same fields on every path, and every number has bounds."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel

from gateway import schema
from gateway.schema import (
    Box,
    CapturedFile,
    ClassificationCapture,
    ClassificationEvent,
    ClassificationResponse,
    ClassificationResult,
    ClassScore,
    DetectionCapture,
    DetectionEvent,
    DetectionResponse,
    DetectionResult,
    ImageSize,
    Latency,
    Timings,
)

CLASSIFIED = ClassificationResult(
    model="m", model_version="3", image=ImageSize(width=640, height=480),
    predictions=[ClassScore(index=281, label="tabby", probability=0.62)],
)  # fmt: skip
DETECTED = DetectionResult(
    model="d", model_version="1", image=ImageSize(width=1920, height=1080), label="person", person_count=1,
    threshold=0.5, boxes=[Box(x1=1, y1=2, x2=30, y2=40, score=0.9, label="person")],
)  # fmt: skip
TIMINGS = Timings(decode=1, preprocess=2, inference=3, total=7)
LATENCY = Latency(wait=1, preprocess=2, inference=3, total=6)


@pytest.mark.parametrize(
    ("result", "extended"),
    [
        (ClassificationResult, (ClassificationResponse, ClassificationEvent, ClassificationCapture)),
        (DetectionResult, (DetectionResponse, DetectionEvent, DetectionCapture)),
    ],
)
def test_every_path_carries_the_result_fields_unchanged(
    result: type[BaseModel], extended: tuple[type[BaseModel], ...]
) -> None:
    for model in extended:
        assert issubclass(model, result), f"{model.__name__} must extend {result.__name__}"
        for name, info in result.model_fields.items():
            assert model.model_fields[name].annotation == info.annotation, f"{model.__name__}.{name}"


@pytest.mark.parametrize("result", [CLASSIFIED, DETECTED])
def test_predict_sse_and_capture_serialize_the_same_result(result: ClassificationResult | DetectionResult) -> None:
    fields = result.model_dump(mode="json")
    response = schema.predict_response(result, TIMINGS).model_dump(mode="json")
    event = schema.prediction_event(result, stream="cam", frame=7, captured_at=1.5, latency=LATENCY)
    record = schema.capture_record(event, "every_nth", CapturedFile(name="a.jpg", width=64, height=36))
    for extended in (response, event.model_dump(mode="json"), record.model_dump(mode="json")):
        assert {k: extended[k] for k in fields} == fields
    assert set(response) - set(fields) == {"timings_ms"}
    assert set(event.model_dump()) - set(fields) == {
        "stream",
        "frame",
        "captured_at",
        "source_at",
        "clock",
        "latency_ms",
    }
    assert schema.event_type(event) == "prediction"


def contract_models() -> list[type[BaseModel]]:
    return [m for m in vars(schema).values() if isinstance(m, type) and issubclass(m, schema.Contract)]


def test_every_number_in_the_contract_is_bounded() -> None:
    def bounded(metadata: list[object]) -> bool:
        bounds = {type(m).__name__ for m in metadata}
        return bool({"Ge", "Gt"} & bounds and {"Le", "Lt"} & bounds)

    unbounded = []
    for model in contract_models():
        for name, info in model.model_fields.items():
            if typing.get_origin(info.annotation) is dict:  # numeric values: Annotated[int, Field(...)]
                value = typing.get_args(info.annotation)[1]
                numeric = (typing.get_args(value) or (value,))[0] in (int, float)
                if numeric and not bounded([m for f in typing.get_args(value)[1:] for m in getattr(f, "metadata", [])]):
                    unbounded.append(f"{model.__name__}.{name}[]")
                continue
            kinds = set(typing.get_args(info.annotation)) or {info.annotation}
            if kinds & {int, float} and not bounded(info.metadata):
                unbounded.append(f"{model.__name__}.{name}")
    assert unbounded == [], "numbers without a lower and an upper bound"


def test_contract_models_refuse_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        ImageSize(width=1, height=1, depth=3)  # type: ignore[call-arg]
