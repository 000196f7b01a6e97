"""What one benchmark run measured, as plain dataclasses, plus the table and JSON writers."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, samples_s: list[float]) -> Latency:
        if not samples_s:
            return cls(math.nan, math.nan, math.nan)
        ordered = sorted(samples_s)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

        return cls(p50_ms=pct(0.50), p99_ms=pct(0.99), mean_ms=sum(ordered) / len(ordered) * 1000)


@dataclass(frozen=True)
class TritonStats:
    """Deltas of Triton's statistics API over one measured interval."""

    requests: int
    executions: int
    queue_ms: float  # mean per request
    compute_ms: float  # mean per request: input + infer + output
    compute_input_ms: float = math.nan  # the parts of compute_ms
    compute_infer_ms: float = math.nan
    compute_output_ms: float = math.nan

    @property
    def avg_batch(self) -> float:
        return self.requests / self.executions if self.executions else math.nan


@dataclass(frozen=True)
class Level:
    """One measured point: a path, a client, a concurrency (or batch size)."""

    path: str  # ort | triton | gateway | direct
    client: str  # ort defaults, as served, grpc-aio, grpc-sync, http keep-alive, pil+grpc-sync
    concurrency: int
    batch: int
    images_per_s: float
    requests: int
    errors: int
    seconds: float
    latency: Latency
    cpu_cores: dict[str, float] = field(default_factory=dict)  # process → cores used (CPU s / wall s)
    triton: TritonStats | None = None

    @property
    def disturbed(self) -> bool:
        """Other processes used more than a quarter core while this level ran: compare with care."""
        return self.cpu_cores.get("other", 0.0) > 0.25

    @property
    def label(self) -> str:
        return f"{self.path}/{self.client}"


@dataclass
class Run:
    started_utc: str
    config: dict[str, Any]
    levels: list[Level] = field(default_factory=list)
    paired: dict[str, Latency] = field(default_factory=dict)  # measure_paired: "gateway", "direct"

    def best(self, path: str, *, concurrency: int | None = None, batch: int | None = None) -> Level | None:
        found = [
            lv
            for lv in self.levels
            if lv.path == path
            and (concurrency is None or lv.concurrency == concurrency)
            and (batch is None or lv.batch == batch)
        ]
        return max(found, key=lambda lv: lv.images_per_s, default=None)

    def ratios(self) -> dict[str, float]:
        out: dict[str, float] = {}
        base = self.best("ort", batch=1)  # the headline baseline: sequential batch-1 onnxruntime
        for lv in self.levels:
            if lv.path == "triton" and base:
                out[f"triton/{lv.client}@{lv.concurrency} vs ort b1"] = lv.images_per_s / base.images_per_s
        for lv in self.levels:
            if lv.path != "gateway":
                continue
            direct = next((d for d in self.levels if d.path == "direct" and d.concurrency == lv.concurrency), None)
            if direct:
                out[f"gateway p50 / direct p50 @{lv.concurrency}"] = lv.latency.p50_ms / direct.latency.p50_ms
                out[f"gateway / direct img/s @{lv.concurrency}"] = lv.images_per_s / direct.images_per_s
        if self.paired:
            out["gateway p50 / direct p50 @1, paired"] = self.paired["gateway"].p50_ms / self.paired["direct"].p50_ms
        return out

    def to_json(self) -> dict[str, Any]:
        levels = []
        for lv in self.levels:
            d = asdict(lv)
            if lv.triton is not None:
                d["triton"]["avg_batch"] = lv.triton.avg_batch
            levels.append(d)
        paired = {name: asdict(lat) for name, lat in self.paired.items()}
        return {
            "started_utc": self.started_utc,
            "config": self.config,
            "levels": levels,
            "paired": paired,
            "ratios": self.ratios(),
        }

    def write(self, directory: Path, prefix: str = "") -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{prefix}{self.started_utc.replace(':', '').replace('-', '')}.json"
        path.write_text(json.dumps(self.to_json(), indent=2, default=float) + "\n")
        return path


def _cpu(lv: Level) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in lv.cpu_cores.items())


def table(run: Run) -> str:
    head = (
        "path",
        "client",
        "conc",
        "batch",
        "img/s",
        "p50 ms",
        "p99 ms",
        "err",
        "avg batch",
        "queue ms",
        "compute ms",
        "CPU cores",
    )
    rows: list[tuple[str, ...]] = [head]
    for lv in run.levels:
        t = lv.triton
        rows.append(
            (
                lv.path,
                lv.client,
                str(lv.concurrency),
                str(lv.batch),
                f"{lv.images_per_s:.1f}" + ("*" if lv.disturbed else ""),
                f"{lv.latency.p50_ms:.2f}",
                f"{lv.latency.p99_ms:.2f}",
                str(lv.errors),
                f"{t.avg_batch:.2f}" if t else "",
                f"{t.queue_ms:.2f}" if t else "",
                f"{t.compute_ms:.2f}" if t else "",
                _cpu(lv),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i in (0, 1, 11) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(lv.disturbed for lv in run.levels):
        lines.append("* other processes used > 0.25 core during this level (see CPU 'other'): numbers are low")
    if run.paired:
        g, d = run.paired["gateway"], run.paired["direct"]
        lines.append(f"\npaired @1 (taking turns): gateway p50 {g.p50_ms:.2f} ms, direct p50 {d.p50_ms:.2f} ms")
    ratios = run.ratios()
    if ratios:
        lines.append("")
        lines.extend(f"{k:<40} {v:.3f}" for k, v in ratios.items())
    return "\n".join(lines)


def progress(lv: Level) -> None:
    t = lv.triton
    extra = f"  batch {t.avg_batch:.2f} queue {t.queue_ms:.2f} ms compute {t.compute_ms:.2f} ms" if t else ""
    cpu = " ".join(f"{k}={v:.2f}" for k, v in lv.cpu_cores.items())
    print(
        f"  {lv.label:<28} c={lv.concurrency:<3} b={lv.batch:<3} {lv.images_per_s:8.1f} img/s  "
        f"p50 {lv.latency.p50_ms:6.2f} ms  p99 {lv.latency.p99_ms:6.2f} ms{extra}  [{cpu}]",
        flush=True,
    )
