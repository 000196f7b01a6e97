"""``python -m export MODEL``: torchvision model → Triton model repository.

- ``mobilenet_v3_small``: ImageNet classifier → ONNX (onnxruntime backend).
- ``person_detector``: a Faster R-CNN variant (``--arch``) → TorchScript (LibTorch
  backend, GPU) and ONNX (onnxruntime; the embedded CPU server), same contract.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from export.errors import ExportError, ParityError

if TYPE_CHECKING:
    from export.detector import BuiltDetector

CLASSIFIER = "mobilenet_v3_small"
DETECTOR = "person_detector"
MODELS = (CLASSIFIER, DETECTOR)
DETECTOR_ARCHS = (
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
)


def _size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` → (height, width)."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or not (32 <= int(w) <= 4096 and 32 <= int(h) <= 4096):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT between 32 and 4096, got {text!r}")
    return int(h), int(w)


def _version(text: str) -> int | str:
    if text == "next":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a version number >= 1 or `next`, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    p.add_argument("model", choices=MODELS, help="model to export (its Triton name)")
    p.add_argument(
        "--weights",
        default="default",
        help="default: torchvision's pretrained weights (downloads once); random: untrained; "
        "PATH: a fine-tuned state dict (default: %(default)s)",
    )
    p.add_argument("--labels", type=Path, help="class names, one per line (for a checkpoint with other classes)")
    p.add_argument(
        "--repo", type=Path, default=Path("model_repository"), help="model repository (default: %(default)s)"
    )
    p.add_argument(
        "--version",
        type=_version,
        default=1,
        help="model version directory: a number, or `next` for one past the highest already there "
        "(a new version for a running Triton to load) (default: %(default)s)",
    )
    p.add_argument(
        "--input-dtype",
        choices=("uint8", "float32"),
        default="uint8",
        help="uint8: normalization folded into the graph (default); float32: the client normalizes",
    )
    p.add_argument("--write-config", action="store_true", help="overwrite an existing config.pbtxt")
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random and the parity batch")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="classifier: max abs difference allowed, times the largest output value above 1 (default: %(default)s)",
    )
    d = p.add_argument_group("person_detector")
    d.add_argument("--arch", choices=DETECTOR_ARCHS, default=DETECTOR_ARCHS[0], help="default: %(default)s")
    d.add_argument(
        "--frame-size",
        type=_size,
        default=(360, 640),
        metavar="WxH",
        help="frame size the gateway sends (warm-up and tracing size; any size is accepted) (default: 640x360)",
    )
    d.add_argument("--max-detections", type=int, default=100, help="K, detections per image (default: %(default)s)")
    d.add_argument(
        "--score-thresh",
        type=float,
        default=0.05,
        help="detections below this score are dropped in the model (torchvision's default: %(default)s); "
        "the gateway's person threshold applies on top",
    )
    d.add_argument("--max-batch-size", type=int, default=8, help="Triton max_batch_size (default: %(default)s)")
    d.add_argument(
        "--formats",
        default="torchscript,onnx",
        help="comma-separated: torchscript (LibTorch, GPU hosts), onnx (onnxruntime, the embedded server) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--offline-fallback-random",
        action="store_true",
        help="with --weights default: fall back to random weights, loudly, if the download fails (used by `make run`)",
    )
    return p


def run(args: argparse.Namespace) -> None:
    from export.repository import next_version

    if args.version == "next":
        args.version = next_version(args.repo / args.model)
    if args.model == DETECTOR:
        run_detector(args)
    else:
        run_classifier(args)


def _fallback(e: Exception) -> None:
    print(
        f"\nWARNING: {e}\n\nWARNING: falling back to --weights random: predictions will be MEANINGLESS.\n",
        file=sys.stderr,
    )


def run_detector(args: argparse.Namespace) -> None:
    from export.detector import build_detector, export_onnx, export_torchscript
    from export.errors import WeightsUnavailable
    from export.repository import DetectorLayout, config_action, detector_config, staged_version, write_model_files

    formats = {f.strip() for f in args.formats.split(",") if f.strip()}
    if not formats or formats - {"torchscript", "onnx"}:
        raise ExportError(f"--formats takes torchscript and/or onnx, got {args.formats!r}")
    t0 = time.perf_counter()
    opts = {"score_thresh": args.score_thresh, "max_detections": args.max_detections, "seed": args.seed}
    try:
        built = build_detector(args.arch, args.weights, labels_file=args.labels, **opts)
    except WeightsUnavailable as e:
        if not (args.offline_fallback_random and args.weights == "default"):
            raise
        _fallback(e)
        built = build_detector(args.arch, "random", **opts)
    height, width = args.frame_size
    layout = DetectorLayout(
        name=args.model,
        arch=args.arch,
        labels=tuple(built.labels),
        max_detections=args.max_detections,
        warmup_hw=(height, width),
        min_size=built.min_size,
        max_size=built.max_size,
        max_batch_size=args.max_batch_size,
    )
    model_dir = args.repo / args.model
    config_text = detector_config(layout)
    action = config_action(model_dir, config_text=config_text, write_config=args.write_config)
    with staged_version(model_dir, args.version) as stage:
        ts_path = stage / "model.pt" if "torchscript" in formats else None
        onnx_path = stage / "model.onnx" if "onnx" in formats else None
        if ts_path is not None:
            export_torchscript(built.module, ts_path)
        if onnx_path is not None:
            export_onnx(built.module, onnx_path, height=height, width=width)
        print(f"exported {args.model} = {args.arch} ({built.weights_desc}) in {time.perf_counter() - t0:.1f}s")
        for path in (ts_path, onnx_path):
            if path is not None:
                print(f"  {path.name} ({path.stat().st_size / 1e6:.1f} MB)")
        _check_detector(args, built=built, ts_path=ts_path, onnx_path=onnx_path, height=height, width=width)
    write_model_files(model_dir, config_text=config_text, labels=built.labels, action=action, version=args.version)
    print(f"{model_dir / str(args.version)}: published; config.pbtxt {action}; labels: {len(built.labels)}")


def _check_detector(
    args: argparse.Namespace,
    *,
    built: BuiltDetector,
    ts_path: Path | None,
    onnx_path: Path | None,
    height: int,
    width: int,
) -> None:
    from export.parity import check_detector

    # Parity at a size other than the export size: a size baked in by tracing would show here.
    other = (height + height // 3, width - width // 4)
    checks = check_detector(
        built.reference,
        built.module,
        torchscript=ts_path,
        onnx=onnx_path,
        sizes=[other],
        batches=(1, 2),
        max_detections=args.max_detections,
        score_thresh=args.score_thresh,
        seed=args.seed,
    )
    for c in checks:
        worst = max(c.diffs, key=lambda d: (d.missing, d.max_box_px))
        print(f"parity {c.fmt} vs eager torch, batch {c.batch} at {c.width}x{c.height}: {worst}")
    if all(d.matched == 0 for c in checks for d in c.diffs):
        print(
            f"note: no detection scored above --score-thresh {args.score_thresh:g} on the parity images, so the "
            "comparison above is vacuous (expected with --weights random: every box scores 1/91)"
        )
    failed = [c for c in checks if not c.ok]
    if failed:
        raise ParityError(f"{', '.join(sorted({c.fmt for c in failed}))} disagrees with eager torch (see above)")


def run_classifier(args: argparse.Namespace) -> None:
    # torch is imported here, not at module import, so `--help` stays instant.
    import torch

    from export.classifier import INPUT_NAME, OUTPUT_NAMES, build_mobilenet_v3_small, export_onnx
    from export.errors import WeightsUnavailable
    from export.parity import max_abs_diff
    from export.repository import (
        ClassifierLayout,
        classifier_config,
        config_action,
        staged_version,
        write_model_files,
    )

    uint8 = args.input_dtype == "uint8"
    t0 = time.perf_counter()
    try:
        built = build_mobilenet_v3_small(args.weights, labels_file=args.labels, seed=args.seed, normalize=uint8)
    except WeightsUnavailable as e:
        if not (args.offline_fallback_random and args.weights == "default"):
            raise
        _fallback(e)
        built = build_mobilenet_v3_small("random", seed=args.seed, normalize=uint8)
    layout = ClassifierLayout(
        name=args.model,
        num_classes=len(built.labels),
        input_dims=(3, 224, 224),
        input_dtype="TYPE_UINT8" if uint8 else "TYPE_FP32",
        input_name=INPUT_NAME,
        output_names=OUTPUT_NAMES,
    )
    model_dir = args.repo / args.model
    config_text = classifier_config(layout)
    action = config_action(model_dir, config_text=config_text, write_config=args.write_config)
    with staged_version(model_dir, args.version) as stage:
        onnx_path = stage / "model.onnx"
        dtype = torch.uint8 if uint8 else torch.float32
        export_onnx(built.module, onnx_path, input_shape=layout.input_dims, dtype=dtype)
        diffs = max_abs_diff(built.module, onnx_path, input_shape=layout.input_dims, uint8=uint8, seed=args.seed)
        print(f"exported {args.model} ({built.weights_desc}) in {time.perf_counter() - t0:.1f}s")
        for name, diff in diffs.items():
            print(
                f"parity onnxruntime vs eager torch, batch 4: {name} max abs diff {diff.max_abs:.3g} "
                f"(values up to {diff.scale:.3g}; tolerance {args.tolerance:g} x max(1, that))"
            )
        bad = {name: diff for name, diff in diffs.items() if not diff.within(args.tolerance)}
        if bad:
            raise ParityError(
                "onnxruntime differs from eager torch: "
                + ", ".join(f"{n} by {d.max_abs:.3g} (values up to {d.scale:.3g})" for n, d in bad.items())
            )
    write_model_files(model_dir, config_text=config_text, labels=built.labels, action=action, version=args.version)
    print(
        f"{model_dir / str(args.version) / 'model.onnx'}: published; config.pbtxt {action}; "
        f"labels: {len(built.labels)} classes"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args)
    except ExportError as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    return 0
