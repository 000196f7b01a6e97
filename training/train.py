"""``python -m training.train DATA --out RUN``: fine-tune MobileNetV3-Small on an
``ImageFolder`` dataset and write a checkpoint plus its label file.

DATA is either ``<class>/*.jpg`` (a stratified, seeded share is held out for
validation) or ``train/<class>/`` and ``val/<class>/``.  Classes are the folder
names, sorted.  Images go through the serving preprocessing (shorter side 256,
center crop 224, uint8) and the same wrapper the exporter writes to ONNX (the
ImageNet normalization inside the model), so what is validated here is what
Triton will serve.

Written to RUN: ``model.pt`` (a MobileNetV3-Small state dict with a head for the
dataset's classes), ``labels.txt`` (one class per line, in head order) and
``train.json`` (settings, per-epoch loss and validation accuracy).  Then::

    python -m export mobilenet_v3_small --weights RUN/model.pt --labels RUN/labels.txt \\
        --version next --write-config
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import models, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from export.classifier import NormalizedClassifier, load_mobilenet_v3_small, num_outputs
from export.errors import ExportError
from export.repository import atomic_text

RESIZE = 256  # the serving preprocessing: torchvision's preset for MobileNetV3-Small
CROP = 224


class DatasetError(ExportError):
    """The dataset folder cannot be trained on."""


@dataclass(frozen=True)
class Sample:
    path: Path
    target: int


@dataclass(frozen=True)
class Splits:
    classes: list[str]
    train: list[Sample]
    val: list[Sample]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _samples(root: Path, classes: list[str]) -> list[Sample]:
    return [Sample(path, i) for i, name in enumerate(classes) for path in _images(root / name)]


def find_splits(data: Path, *, val_fraction: float, seed: int) -> Splits:
    """Classes from the folders; ``train/`` + ``val/`` if present, else a seeded stratified split."""
    if not data.is_dir():
        raise DatasetError(f"{data}: no such directory")
    if (data / "train").is_dir() and (data / "val").is_dir():
        classes = [p.name for p in _class_dirs(data / "train")]
        extra = sorted({p.name for p in _class_dirs(data / "val")} - set(classes))
        if extra:
            raise DatasetError(f"{data}/val has classes that train/ lacks: {', '.join(extra)}")
        splits = Splits(classes, _samples(data / "train", classes), _samples(data / "val", classes))
    else:
        classes = [p.name for p in _class_dirs(data)]
        rng = random.Random(seed)  # noqa: S311 - a reproducible split, not a secret
        train: list[Sample] = []
        val: list[Sample] = []
        for i, name in enumerate(classes):
            paths = _images(data / name)
            rng.shuffle(paths)
            n_val = math.ceil(len(paths) * val_fraction) if len(paths) > 1 else 0
            val += [Sample(p, i) for p in paths[:n_val]]
            train += [Sample(p, i) for p in paths[n_val:]]
        splits = Splits(classes, train, val)
    if len(splits.classes) < 2:
        raise DatasetError(f"{data}: found {len(splits.classes)} class folder(s); a classifier needs at least 2")
    bad = [c for c in splits.classes if "," in c or ":" in c or not c.isprintable()]
    if bad:
        raise DatasetError(f"class folder names may not contain ',' or ':' (they end up in labels): {bad}")
    counts = [sum(1 for s in splits.train if s.target == i) for i in range(len(splits.classes))]
    empty = [c for c, n in zip(splits.classes, counts, strict=True) if n == 0]
    if empty:
        raise DatasetError(f"{data}: no training images for class(es) {', '.join(empty)}")
    return splits


def serving_transform() -> transforms.Compose:
    """What the gateway does to an upload: shorter side 256 (PIL bilinear), center crop 224, uint8."""
    return transforms.Compose(
        [
            transforms.Resize(RESIZE, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(CROP),
            transforms.PILToTensor(),
        ]
    )


def train_transform() -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(CROP, scale=(0.35, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.2, contrast=0.2),
            transforms.PILToTensor(),
        ]
    )


class ImageList(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, samples: Sequence[Sample], transform: transforms.Compose) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        s = self.samples[i]
        with Image.open(s.path) as im:
            image: torch.Tensor = self.transform(im.convert("RGB"))
        return image, s.target


def build_model(weights: str, num_classes: int, *, seed: int) -> tuple[models.MobileNetV3, str]:
    """MobileNetV3-Small (the exporter's loading) with a fresh head for ``num_classes``
    unless the weights already have one that size."""
    torch.manual_seed(seed)
    model, desc = load_mobilenet_v3_small(weights, seed=seed)
    if num_outputs(model) != num_classes:
        old = model.classifier[3]
        assert isinstance(old, nn.Linear)
        model.classifier[3] = nn.Linear(old.in_features, num_classes)
    return model, desc


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float | None
    seconds: float


@dataclass
class Report:
    classes: list[str]
    weights: str
    train_images: int
    val_images: int
    epochs: list[EpochLog] = field(default_factory=list)
    final_val_accuracy: float | None = None
    per_class_val_accuracy: dict[str, float] = field(default_factory=dict)


def _batches(loader: DataLoader[tuple[torch.Tensor, int]], desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    yield from tqdm(loader, desc=desc, unit="batch", leave=False, file=sys.stderr)


@torch.no_grad()
def evaluate(
    model: NormalizedClassifier, loader: DataLoader[tuple[torch.Tensor, int]], num_classes: int
) -> tuple[float, list[float]]:
    """Top-1 accuracy, overall and per class, in eval mode (as served)."""
    model.eval()
    right = torch.zeros(num_classes)
    total = torch.zeros(num_classes)
    for images, targets in _batches(loader, "validate"):
        logits, _ = model(images)
        hit = (logits.argmax(1) == targets).float()
        right.index_add_(0, targets, hit)
        total.index_add_(0, targets, torch.ones_like(hit))
    per_class = [float(r / t) if t else float("nan") for r, t in zip(right, total, strict=True)]
    return float(right.sum() / total.sum().clamp(min=1)), per_class


@torch.no_grad()
def recalibrate_batchnorm(model: NormalizedClassifier, loader: DataLoader[tuple[torch.Tensor, int]]) -> None:
    """Re-estimate BatchNorm statistics over the training images (serving preprocessing).

    torchvision's MobileNetV3 uses BatchNorm momentum 0.01, so after a short fine-tune
    the running statistics still mostly describe the old data (or, from random
    weights, the init: mean 0, variance 1) and eval-mode outputs are wrong.  A
    cumulative pass (momentum None) replaces them with this dataset's statistics."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for images, _ in _batches(loader, "batchnorm"):
        model(images)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("data", type=Path, help="ImageFolder root: <class>/*.jpg, or train/<class>/ and val/<class>/")
    p.add_argument("--out", type=Path, default=Path("runs/latest"), help="output folder (default: %(default)s)")
    p.add_argument(
        "--weights",
        default="default",
        help="default: ImageNet-pretrained (downloads once); random: from scratch; PATH: a state dict to continue from",
    )
    p.add_argument("--epochs", type=int, default=10, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument(
        "--lr", type=float, default=1e-3, help="AdamW peak learning rate, cosine decay (default: %(default)s)"
    )
    p.add_argument("--weight-decay", type=float, default=1e-4, help="(default: %(default)s)")
    p.add_argument(
        "--val-fraction", type=float, default=0.2, help="share held out without a val/ folder (default: %(default)s)"
    )
    p.add_argument("--no-augment", action="store_true", help="train on the serving crop only (no random crops/flips)")
    p.add_argument(
        "--no-recalibrate-bn", action="store_true", help="keep the BatchNorm running statistics from training"
    )
    p.add_argument("--workers", type=int, default=min(4, max(0, (os.cpu_count() or 1) - 1)), help="data loaders")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = all cores (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    return p


def train(args: argparse.Namespace) -> Report:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    splits = find_splits(args.data, val_fraction=args.val_fraction, seed=args.seed)
    classes = splits.classes
    net, desc = build_model(args.weights, len(classes), seed=args.seed)
    model = NormalizedClassifier(net)
    report = Report(classes, desc, len(splits.train), len(splits.val))
    print(
        f"{len(classes)} classes ({', '.join(classes)}); {len(splits.train)} train / {len(splits.val)} val images; "
        f"weights: {desc}",
        file=sys.stderr,
    )
    loader_opts = {"batch_size": args.batch_size, "num_workers": args.workers, "persistent_workers": args.workers > 0}
    generator = torch.Generator().manual_seed(args.seed)
    fit = DataLoader(
        ImageList(splits.train, serving_transform() if args.no_augment else train_transform()),
        shuffle=True,
        drop_last=len(splits.train) > args.batch_size,  # a batch of 1 breaks BatchNorm in training mode
        generator=generator,
        **loader_opts,
    )
    plain = DataLoader(ImageList(splits.train, serving_transform()), shuffle=False, **loader_opts)
    val = DataLoader(ImageList(splits.val, serving_transform()), shuffle=False, **loader_opts) if splits.val else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = max(1, args.epochs * len(fit))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    with tqdm(total=steps, desc="train", unit="step", file=sys.stderr) as bar:
        for epoch in range(1, args.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            loss_sum = right = seen = 0.0
            for images, targets in fit:
                logits, _ = model(images)
                loss = loss_fn(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                n = targets.shape[0]
                loss_sum += float(loss) * n
                right += float((logits.argmax(1) == targets).sum())
                seen += n
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}")
            val_acc = None
            if val is not None:
                if not args.no_recalibrate_bn:  # eval mode needs this data's statistics (see recalibrate_batchnorm)
                    recalibrate_batchnorm(model, plain)
                val_acc, per_class = evaluate(model, val, len(classes))
                report.final_val_accuracy = val_acc
                report.per_class_val_accuracy = dict(zip(classes, per_class, strict=True))
            log = EpochLog(epoch, loss_sum / max(seen, 1), right / max(seen, 1), val_acc, time.perf_counter() - t0)
            report.epochs.append(log)
            shown = "-" if val_acc is None else f"{val_acc:.3f}"
            bar.write(
                f"epoch {epoch}/{args.epochs}: loss {log.train_loss:.4f}  train acc {log.train_accuracy:.3f}  "
                f"val acc {shown}  ({log.seconds:.1f}s)",
                file=sys.stderr,
            )
    if val is None and not args.no_recalibrate_bn:
        recalibrate_batchnorm(model, plain)
    _write(args.out, net, classes, report, args)
    return report


def _write(out: Path, net: nn.Module, classes: list[str], report: Report, args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".model.pt.tmp"
    torch.save(net.state_dict(), tmp)
    tmp.replace(out / "model.pt")
    atomic_text(out / "labels.txt", "".join(f"{c}\n" for c in classes))
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    atomic_text(out / "train.json", json.dumps({"settings": settings, **asdict(report)}, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.epochs < 1 or args.batch_size < 2 or not 0.0 <= args.val_fraction < 1.0:
        print("--epochs must be >= 1, --batch-size >= 2 and 0 <= --val-fraction < 1", file=sys.stderr)
        return 2
    try:
        report = train(args)
    except ExportError as e:
        print(f"train: {e}", file=sys.stderr)
        return 1
    acc = report.final_val_accuracy
    print(f"validation accuracy: {'n/a (no validation images)' if acc is None else f'{acc:.4f}'}")
    for name, value in report.per_class_val_accuracy.items():
        print(f"  {name}: {value:.4f}")
    print(f"wrote {args.out / 'model.pt'}, {args.out / 'labels.txt'}, {args.out / 'train.json'}")
    print(
        f"export it: python -m export mobilenet_v3_small --weights {args.out / 'model.pt'} "
        f"--labels {args.out / 'labels.txt'} --version next --write-config"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
