"""Exported models against eager torch: classifier outputs, and detections matched by box."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision  # noqa: F401 - registers torchvision::nms and roi_align, which TorchScript files call
from PIL import Image, ImageDraw
from torch import nn


@dataclass(frozen=True)
class OutputDiff:
    max_abs: float  # max |onnxruntime - torch|
    scale: float  # max |torch|: float32 rounding grows with the values compared

    def within(self, tolerance: float) -> bool:
        """``max_abs <= tolerance * max(1, scale)``: absolute for values up to 1, relative
        above (a fine-tuned head's logits reach the tens, where 1e-4 is below float32's
        rounding of a 1000-term dot product).  False for NaN."""
        return self.max_abs <= tolerance * max(1.0, self.scale)


def max_abs_diff(
    module: nn.Module, onnx_path: Path, *, input_shape: tuple[int, int, int], uint8: bool, batch: int = 4, seed: int = 0
) -> dict[str, OutputDiff]:
    """Run ``batch`` random images through both; the max abs difference per output."""
    rng = np.random.default_rng(seed)
    shape = (batch, *input_shape)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8) if uint8 else rng.standard_normal(shape, dtype=np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        want = module(torch.from_numpy(x))
    if isinstance(want, torch.Tensor):
        want = (want,)
    return {
        name: OutputDiff(float(np.max(np.abs(g - w.numpy()))), float(np.max(np.abs(w.numpy()))))
        for name, g, w in zip(names, got, want, strict=True)
    }


@dataclass(frozen=True)
class Detections:
    """One image's detections, cut to its count: boxes [n, 4], scores [n], labels [n]."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_padded(
        cls, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, num: np.ndarray | int
    ) -> Detections:
        n = int(np.asarray(num).reshape(-1)[0])
        return cls(np.asarray(boxes)[:n], np.asarray(scores)[:n], np.asarray(labels)[:n])


@dataclass(frozen=True)
class DetectionDiff:
    matched: int
    missing: int  # detections of one side with no counterpart, beyond the cut-off tie zone
    nms_ties: int  # unmatched, but overlapping a better detection at the NMS threshold
    max_box_px: float  # over matched pairs
    min_iou: float
    max_score: float

    @property
    def ok(self) -> bool:
        return self.missing == 0

    def __str__(self) -> str:
        return (
            f"{self.matched} matched, {self.missing} unmatched, {self.nms_ties} NMS ties, "
            f"max box diff {self.max_box_px:.3g} px, "
            f"min IoU {self.min_iou:.4f}, max score diff {self.max_score:.3g}"
        )


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box against many."""
    x1 = np.maximum(a[0], b[:, 0])
    y1 = np.maximum(a[1], b[:, 1])
    x2 = np.minimum(a[2], b[:, 2])
    y2 = np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    iou: np.ndarray = np.where(
        area > 0, inter / np.maximum(area, 1e-9), (np.abs(a - b) < 1e-6).all(axis=1).astype(np.float64)
    )
    return iou


def _nms_tie(d: Detections, i: int, nms_iou: float, slack: float = 0.01) -> bool:
    """Detection ``i`` overlaps a better one of its class at the NMS threshold (within ``slack``):
    whether NMS keeps it depends on rounding in the last bits of the box coordinates."""
    better = (d.labels == d.labels[i]) & (d.scores > d.scores[i])
    if not better.any():
        return False
    return bool((np.abs(_iou(d.boxes[i], d.boxes[better]) - nms_iou) <= slack).any())


def _one_way(
    ref: Detections, got: Detections, *, floor: float, box_px: float, min_iou: float, score_tol: float, nms_iou: float
) -> tuple[int, int, int, list[float], list[float], list[float]]:
    used = np.zeros(len(got.scores), dtype=bool)
    matched = missing = ties = 0
    box_d: list[float] = []
    ious: list[float] = []
    score_d: list[float] = []
    for i in np.argsort(-ref.scores, kind="stable"):
        cand = (~used) & (got.labels == ref.labels[i]) & (np.abs(got.scores - ref.scores[i]) <= score_tol)
        idx = np.flatnonzero(cand)
        if idx.size:
            iou = _iou(ref.boxes[i], got.boxes[idx])
            px = np.abs(got.boxes[idx] - ref.boxes[i]).max(axis=1)
            good = (px <= box_px) | (iou >= min_iou)
            if good.any():
                j = idx[good][np.argmax(iou[good])]
                used[j] = True
                matched += 1
                box_d.append(float(np.abs(got.boxes[j] - ref.boxes[i]).max()))
                ious.append(float(_iou(ref.boxes[i], got.boxes[j : j + 1])[0]))
                score_d.append(float(abs(got.scores[j] - ref.scores[i])))
                continue
        if ref.scores[i] <= floor + score_tol:  # a tie at the cut-off: may fall either way
            continue
        if _nms_tie(ref, i, nms_iou):
            ties += 1
            continue
        missing += 1
    return matched, missing, ties, box_d, ious, score_d


def compare_detections(
    ref: Detections,
    got: Detections,
    *,
    max_detections: int,
    score_thresh: float = 0.0,
    box_px: float = 1.0,
    min_iou: float = 0.99,
    score_tol: float = 1e-3,
    min_score: float = 0.0,
    nms_iou: float = 0.5,
) -> DetectionDiff:
    """Match detections both ways by label, score (±score_tol) and box (≤box_px or IoU≥min_iou).

    Order is not compared: near-equal scores may sort differently.  A detection with no
    counterpart counts as missing unless its score is within ``score_tol`` of the other
    side's cut-off (its K-th score when full, else the score threshold), where a tie can
    legitimately fall either way, or unless it overlaps a better detection of its class at
    the NMS threshold ``nms_iou`` (±0.01: box rounding decides whether NMS keeps it;
    counted as ``nms_ties``).  Detections below ``min_score`` may go unmatched: two
    runtimes that round differently can pick a different marginal region proposal, whose
    detections score low (measured with the synthetic test model: all such differences
    scored < 0.14, against 0.3-0.6 for the top detections)."""

    def floor(d: Detections) -> float:
        cut = float(d.scores.min()) if len(d.scores) >= max_detections else score_thresh
        return max(cut, min_score)

    tol = {"box_px": box_px, "min_iou": min_iou, "score_tol": score_tol, "nms_iou": nms_iou}
    m1, miss1, t1, b1, i1, s1 = _one_way(ref, got, floor=floor(got), **tol)
    _, miss2, t2, _, _, _ = _one_way(got, ref, floor=floor(ref), **tol)
    return DetectionDiff(
        matched=m1,
        missing=miss1 + miss2,
        nms_ties=t1 + t2,
        max_box_px=max(b1, default=0.0),
        min_iou=min(i1, default=1.0),
        max_score=max(s1, default=0.0),
    )


@dataclass(frozen=True)
class FormatCheck:
    fmt: str
    batch: int
    height: int
    width: int
    diffs: list[DetectionDiff]

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.diffs)


def _padded_to_list(outputs: tuple[np.ndarray, ...] | list[np.ndarray]) -> list[Detections]:
    boxes, scores, labels, num = outputs
    return [Detections.from_padded(boxes[i], scores[i], labels[i], num[i]) for i in range(len(boxes))]


def scenes(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``[B, 3, H, W]`` uint8 photo-like images: gradients, texture, mild noise, and
    filled shapes with hard edges (uniform noise is no image a detector ever sees)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((batch, 3, height, width), dtype=np.uint8)
    for i in range(batch):
        phase = rng.uniform(0, 6.3, 3)
        base = np.stack(
            [
                xx * 255 / width,
                yy * 255 / height,
                128 + 100 * np.sin(xx / (5 + 4 * phase[0]) + phase[1]) * np.cos(yy / (9 + phase[2])),
            ],
            axis=-1,
        )
        base += rng.normal(0, 8, base.shape)
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            x1 = x0 + int(rng.integers(8, max(9, width // 3)))
            y1 = y0 + int(rng.integers(8, max(9, height // 2)))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=color)
        out[i] = np.asarray(image).transpose(2, 0, 1)
    return out


def eager_detections(reference: nn.Module, images: np.ndarray) -> list[Detections]:
    """Stock torchvision, eager: a list of float images in [0, 1], a list of dicts out."""
    with torch.no_grad():
        out = reference([torch.from_numpy(x).to(torch.float32) / 255.0 for x in images])
    return [Detections(d["boxes"].numpy(), d["scores"].numpy(), d["labels"].numpy()) for d in out]


def check_detector(
    reference: nn.Module,
    module: nn.Module,
    *,
    torchscript: Path | None,
    onnx: Path | None,
    sizes: list[tuple[int, int]],
    batches: tuple[int, ...] = (1, 2, 3, 4),
    max_detections: int,
    score_thresh: float,
    onnx_min_score: float = 0.2,
    seed: int = 0,
) -> list[FormatCheck]:
    """Stock eager torchvision vs the exported wrapper run eagerly, TorchScript (whole
    batch) and onnxruntime (image by image), on the same scenes.  The reference is cut
    to K like the exports."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # "torch.jit.load is deprecated"
        scripted = torch.jit.load(str(torchscript), map_location="cpu") if torchscript else None  # type: ignore[no-untyped-call]
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]) if onnx else None
    checks: list[FormatCheck] = []
    for height, width in sizes:
        for b in batches:
            x = scenes(b, height, width, seed=seed + 7919 * b + height)
            want = [
                Detections(d.boxes[:max_detections], d.scores[:max_detections], d.labels[:max_detections])
                for d in eager_detections(reference, x)
            ]
            with torch.no_grad():
                got = {"wrapper": _padded_to_list([t.numpy() for t in module(torch.from_numpy(x))])}
                if scripted is not None:
                    got["torchscript"] = _padded_to_list([t.numpy() for t in scripted(torch.from_numpy(x))])
            if session is not None:
                got["onnx"] = [_padded_to_list(session.run(None, {"images": x[i : i + 1]}))[0] for i in range(b)]
            for fmt, dets in got.items():
                floor = onnx_min_score if fmt == "onnx" else 0.0  # torch vs torch: every detection
                diffs = [
                    compare_detections(w, g, max_detections=max_detections, score_thresh=score_thresh, min_score=floor)
                    for w, g in zip(want, dets, strict=True)
                ]
                checks.append(FormatCheck(fmt, b, height, width, diffs))
    return checks
