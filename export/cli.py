"""``python -m export MODEL``: torchvision model → Triton model repository."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from export.errors import ExportError, ParityError

MODELS = ("mobilenet_v3_small",)


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
    p.add_argument("--version", type=int, default=1, help="model version directory (default: %(default)s)")
    p.add_argument(
        "--input-dtype",
        choices=("uint8", "float32"),
        default="uint8",
        help="uint8: normalization folded into the graph (default); float32: the client normalizes",
    )
    p.add_argument("--write-config", action="store_true", help="overwrite an existing config.pbtxt")
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random and the parity batch")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed (default: %(default)s)")
    p.add_argument(
        "--offline-fallback-random",
        action="store_true",
        help="with --weights default: fall back to random weights, loudly, if the download fails (used by `make run`)",
    )
    return p


def run(args: argparse.Namespace) -> None:
    # torch is imported here, not at module import, so `--help` stays instant.
    import torch

    from export.classifier import INPUT_NAME, OUTPUT_NAMES, build_mobilenet_v3_small, export_onnx
    from export.errors import WeightsUnavailable
    from export.parity import max_abs_diff
    from export.repository import ClassifierLayout, classifier_config, write_model_files

    uint8 = args.input_dtype == "uint8"
    t0 = time.perf_counter()
    try:
        built = build_mobilenet_v3_small(args.weights, labels_file=args.labels, seed=args.seed, normalize=uint8)
    except WeightsUnavailable as e:
        if not (args.offline_fallback_random and args.weights == "default"):
            raise
        print(
            f"\nWARNING: {e}\n\nWARNING: falling back to --weights random: predictions will be MEANINGLESS.\n",
            file=sys.stderr,
        )
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
    onnx_path = model_dir / str(args.version) / "model.onnx"
    export_onnx(built.module, onnx_path, input_shape=layout.input_dims, dtype=torch.uint8 if uint8 else torch.float32)
    config = write_model_files(
        model_dir, config_text=classifier_config(layout), labels=built.labels, write_config=args.write_config
    )
    diffs = max_abs_diff(built.module, onnx_path, input_shape=layout.input_dims, uint8=uint8, seed=args.seed)
    print(f"exported {args.model} ({built.weights_desc}) -> {onnx_path} in {time.perf_counter() - t0:.1f}s")
    print(f"config.pbtxt: {config}; labels: {len(built.labels)} classes")
    for name, diff in diffs.items():
        print(
            f"parity onnxruntime vs eager torch, batch 4: {name} max abs diff {diff:.3g} (tolerance {args.tolerance:g})"
        )
    worst = max(diffs.values())
    if not worst <= args.tolerance:  # also catches NaN
        raise ParityError(f"onnxruntime differs from eager torch by {worst:.3g} > {args.tolerance:g}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args)
    except ExportError as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    return 0
