"""``python -m export.prepare``: fill a deployment's model repository, and refuse a repository
the target Triton could not load.  The compose ``exporter`` service runs it before Triton.

1. Each model whose version 1 lacks its files is exported (``--weights``: torchvision's
   pretrained weights where the host can download them, or a mounted checkpoint).
   ``--force`` exports again even when the files are there.
2. Every version of every model is checked against the target Triton:

   - a TorchScript ``model.pt`` must load and run in *this* torch, and this torch must
     be the target's LibTorch (``--libtorch``, 2.5 for NGC 24.10).  A file scripted by
     a newer torch (``make model`` on a developer machine uses 2.14) fails here with the
     same error Triton would give, instead of at Triton's start;
   - an ``model.onnx`` must use an opset the target's onnxruntime runs (``--max-opset``,
     21 for onnxruntime 1.19 in 24.10);
   - ``config.pbtxt`` must parse with Triton's own protobuf definitions and name a
     backend the target serves.

Exit 0 when the repository is ready, 1 with every reason when it is not, so the
gateway (``depends_on: service_completed_successfully``) never starts on a repository
Triton would refuse.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from export.cli import CLASSIFIER, DETECTOR, DETECTOR_ARCHS
from export.cli import main as export_main

TARGET_BACKENDS = {"onnxruntime_onnx", "pytorch_libtorch", "onnxruntime", "pytorch"}
FILES = {CLASSIFIER: ("model.onnx",), DETECTOR: ("model.pt", "model.onnx")}


@dataclass
class Report:
    exported: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path("model_repository"), help="the model repository")
    p.add_argument("--weights", default="default", help="classifier weights: default | random | PATH")
    p.add_argument("--detector-weights", default="default", help="detector weights: default | random | PATH")
    p.add_argument("--arch", choices=DETECTOR_ARCHS, default=DETECTOR_ARCHS[0], help="detector variant")
    p.add_argument("--libtorch", default="2.5", help="the target Triton's LibTorch major.minor (24.10: 2.5)")
    p.add_argument("--max-opset", type=int, default=21, help="the highest ONNX opset the target runs (24.10: 21)")
    p.add_argument("--force", action="store_true", help="export even when the model's files are there")
    return p


def _missing(repo: Path, model: str) -> bool:
    return not all((repo / model / "1" / name).is_file() for name in FILES[model])


def fill(args: argparse.Namespace, report: Report) -> None:
    for model, weights in ((CLASSIFIER, args.weights), (DETECTOR, args.detector_weights)):
        if not args.force and not _missing(args.repo, model):
            continue
        argv = [model, "--weights", weights, "--repo", str(args.repo), "--version", "1"]
        if model == DETECTOR:
            argv += ["--arch", args.arch]
        if export_main(argv) != 0:
            report.problems.append(f"{model}: the export failed (see above)")
        else:
            report.exported.append(model)


def check_torchscript(path: Path, libtorch: str) -> str | None:
    """None if ``path`` loads and runs in this torch; else why not."""
    import torch
    import torchvision  # noqa: F401 - registers torchvision::nms, as Triton's LibTorch backend does

    if not torch.__version__.startswith(libtorch + "."):
        return (
            f"this exporter runs torch {torch.__version__}, but the target Triton's LibTorch is {libtorch}: "
            "a load check here proves nothing (run the exporter image, or `make export-ngc`)"
        )
    try:
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        with torch.inference_mode():
            out = module(torch.zeros(1, 3, 240, 320, dtype=torch.uint8))
    except Exception as e:  # noqa: BLE001 - TorchScript raises RuntimeError and worse; every one is a refusal
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"LibTorch {libtorch} cannot run it: {first}"
    if not isinstance(out, tuple | list) or len(out) != 4:
        return f"it answers {type(out).__name__}, not (boxes, scores, labels, num_detections)"
    return None


def check_onnx(path: Path, max_opset: int) -> str | None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - a protobuf that does not parse
        return f"not an ONNX model: {e}"
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if opsets.get("ai.onnx", 0) > max_opset:
        return f"opset {opsets['ai.onnx']} > {max_opset}, the highest the target's onnxruntime runs"
    return None


def check_config(path: Path) -> str | None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    try:
        cfg = text_format.Parse(path.read_text(), mc.ModelConfig())
    except (OSError, text_format.ParseError) as e:
        return f"does not parse as a Triton ModelConfig: {e}"
    backend = cfg.backend or cfg.platform
    if backend not in TARGET_BACKENDS:
        return f"backend {backend!r} is not one the target serves ({', '.join(sorted(TARGET_BACKENDS))})"
    if cfg.name and cfg.name != path.parent.name:
        return f"names model {cfg.name!r}, but lives in {path.parent.name}/"
    return None


def check(args: argparse.Namespace, report: Report) -> None:
    for model in (CLASSIFIER, DETECTOR):
        folder = args.repo / model
        if not folder.is_dir():
            report.problems.append(f"{folder}: missing")
            continue
        problem = check_config(folder / "config.pbtxt")
        if problem:
            report.problems.append(f"{folder / 'config.pbtxt'}: {problem}")
        versions = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdecimal())
        if not versions:
            report.problems.append(f"{folder}: no version directory")
        for version in versions:
            for path in (version / "model.pt", version / "model.onnx"):
                if not path.is_file():
                    continue
                if path.suffix == ".pt":
                    problem = check_torchscript(path, args.libtorch)
                else:
                    problem = check_onnx(path, args.max_opset)
                if problem:
                    report.problems.append(f"{path}: {problem}")
                else:
                    report.checked.append(str(path))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    report = Report()
    fill(args, report)
    if not report.problems:
        check(args, report)
    for path in report.checked:
        print(f"ok: {path}")
    if report.problems:
        print("the model repository is not ready for the target Triton:", file=sys.stderr)
        for problem in report.problems:
            print(f"  - {problem}", file=sys.stderr)
        print(
            "re-export with the exporter image (`docker compose run --rm exporter --force`) or `make export-ngc`",
            file=sys.stderr,
        )
        return 1
    print(f"model repository ready: {args.repo} (exported: {', '.join(report.exported) or 'nothing'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
