"""The stream-density benchmark's results: one level per (arm, rate, stream count), the report,
its table and its plot (``python -m bench.stream_density`` measures them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AGE_BOUND_MS = 500.0  # a level is sustained when frame age p95 stays within it ...
FPS_SHARE = 0.9  # ... and every stream reaches this share of its sampling rate
CAMERA_FPS = 25
GOP = 25  # frames from one keyframe to the next: 1 keyframe/s


@dataclass
class DensityLevel:
    arm: str
    rate: float  # sample_fps per stream
    streams: int
    age_p50_ms: float  # receive - captured_at (the reader's clock)
    age_p95_ms: float
    source_age_p50_ms: float | None  # receive - source_at (the camera's clock), events that carry it
    source_age_p95_ms: float | None
    fps_min: float
    fps_mean: float
    cpu: dict[str, float]  # cores per process group
    millicores_per_stream: float  # the reader's process (gateway; naive: this one) / streams
    clocks: dict[str, int] = field(default_factory=dict)  # events per clock (rtcp, pts, reader)
    decode: dict[str, int] = field(default_factory=dict)  # streams per decode mode (GET /streams)
    decoded_fps: float | None = None  # frames decoded per second per stream (GET /streams)
    unstarted: dict[str, int] = field(default_factory=dict)  # streams with no decode mode yet: per state, reconnects
    # gateway arms: p50 and p95 of each part of an event's age (its latency_ms, and delivery: receive -
    # captured_at - total), ms: where the tail comes from
    parts: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    triton: dict[str, float] = field(default_factory=dict)  # gateway arms: Triton's statistics over the window
    sustained: bool = False

    @property
    def disturbed(self) -> bool:
        """Other processes used more than a quarter core during the level: compare with care."""
        return self.cpu.get("other", 0.0) > 0.25


@dataclass
class Report:
    started_utc: str
    config: dict[str, Any] = field(default_factory=dict)
    levels: list[DensityLevel] = field(default_factory=list)
    fanout: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


_COLUMNS = (
    ("arm", 14, "<"),
    ("fps", 4, ">"),
    ("N", 4, ">"),
    ("age p50", 8, ">"),
    ("p95", 7, ">"),
    ("cam p50", 8, ">"),
    ("p95", 7, ">"),
    ("fps min", 7, ">"),
    ("mean", 5, ">"),
    ("decode", 14, "<"),
    ("dec/s", 5, ">"),
    ("gw", 5, ">"),
    ("triton", 6, ">"),
    ("stub", 5, ">"),
    ("rtsp", 5, ">"),
    ("client", 6, ">"),
    ("other", 5, ">"),
    ("mc/str", 6, ">"),
    ("ok", 3, "<"),
)


def _fmt(cells: list[str]) -> str:
    return "  ".join(f"{c:{a}{w}}" for c, (_, w, a) in zip(cells, _COLUMNS, strict=True)).rstrip()


def header() -> str:
    return _fmt([name for name, _, _ in _COLUMNS])


def parts_row(lv: DensityLevel) -> str:
    """The age's parts, p50/p95 ms, on a line under the level's row (gateway arms)."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    parts = "  ".join(f"{k} {ms(a)}/{ms(b)}" for k, (a, b) in lv.parts.items())
    t = lv.triton
    server = (
        f"  | Triton: {t['images_per_execution']:g} images/batch, queue {t['queue_ms_per_request']:g} ms/request, "
        f"compute {t['compute_ms_per_execution']:g} ms/batch"
        if t
        else ""
    )
    return f"    parts p50/p95 ms: {parts}{server}"


def row(lv: DensityLevel) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    c = lv.cpu
    decode = ",".join(f"{k[:3]}={v}" for k, v in sorted(lv.decode.items())) or "-"
    return _fmt(
        [
            lv.arm,
            f"{lv.rate:g}",
            str(lv.streams),
            ms(lv.age_p50_ms),
            ms(lv.age_p95_ms),
            ms(lv.source_age_p50_ms),
            ms(lv.source_age_p95_ms),
            f"{lv.fps_min:.2f}",
            f"{lv.fps_mean:.2f}",
            decode,
            "-" if lv.decoded_fps is None else f"{lv.decoded_fps:.1f}",
            *(f"{c.get(k, 0.0):.2f}" for k in ("gateway", "triton", "stub", "rtsp", "client", "other")),
            f"{lv.millicores_per_stream:.0f}",
            ("yes" if lv.sustained else "NO") + ("*" if lv.disturbed else ""),
        ]
    )


def table(report: Report) -> str:
    lines = [header(), *(row(lv) for lv in report.levels)]
    lines.append(
        "age: receive - captured_at (reader's clock); cam: receive - source_at (camera's clock, RTCP); "
        "decode: streams per mode; dec/s: frames decoded per stream per second; CPU in cores; "
        "mc/str: the reader's process (gateway, naive: client) in millicores per stream"
    )
    if any(lv.disturbed for lv in report.levels):
        lines.append("* other processes used > 0.25 core during this level (CPU 'other'): compare with care")
    for (arm, rate), best in _best(report).items():
        lines.append(f"most sustained: {arm:<14} at {rate:g} fps: {best} streams")
    if report.fanout:
        lines.append(f"fan-out: {report.fanout}")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)


def _best(report: Report) -> dict[tuple[str, float], int]:
    out: dict[tuple[str, float], int] = {}
    for lv in report.levels:
        out.setdefault((lv.arm, lv.rate), 0)
        if lv.sustained:
            out[(lv.arm, lv.rate)] = max(out[(lv.arm, lv.rate)], lv.streams)
    return out


def plot(report: Report, rates: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rates), figsize=(6 * len(rates), 4.2), squeeze=False, sharey=True)
    for ax, rate in zip(axes[0], rates, strict=True):
        for i, name in enumerate(dict.fromkeys(x.arm for x in report.levels)):
            lv = [x for x in report.levels if x.arm == name and x.rate == rate]
            if not lv:
                continue
            color = f"C{i}"
            ax.plot([x.streams for x in lv], [x.age_p95_ms for x in lv], marker="o", color=color, label=f"{name}")
            cam = [(x.streams, x.source_age_p95_ms) for x in lv if x.source_age_p95_ms is not None]
            if cam:
                ax.plot(
                    *zip(*cam, strict=True), marker=".", linestyle="--", color=color, label=f"{name} (camera clock)"
                )
        ax.axhline(AGE_BOUND_MS, color="grey", linestyle=":", label="500 ms bound")
        ax.set_yscale("log")
        ax.set_xlabel(f"streams (640x360 @ {CAMERA_FPS} fps, GOP {GOP}, sampled at {rate:g} fps)")
        ax.set_title(f"sampled at {rate:g} fps")
    axes[0][0].set_ylabel("frame age p95, capture to event (ms)")
    legend = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=4, fontsize="small")
    fig.suptitle(f"stream density per reader, {os.cpu_count()}-core machine")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
