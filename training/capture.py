"""``python -m training.capture SOURCE --label NAME``: frames from any source into an
``ImageFolder`` tree (``<out>/<label>/<name>.jpg``), at a given rate, with a progress bar.

SOURCE is anything the gateway ingests: an ``rtsp://`` URL, a video file, or a
webcam index.  Frames come through the gateway's own reader (the same decoder
timeouts, reconnects and resizing), so a dataset looks like what the model will be
served.  Files are written to a temp name and renamed; names are generated.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

import cv2
from tqdm import tqdm

from gateway.ingest import READERS, ReaderConfig, StreamState, make_reader, parse_source, redact
from gateway.ingest.sources import SourceError

LABEL_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _label(text: str) -> str:
    if not text or len(text) > 64 or not set(text) <= LABEL_CHARS:
        raise argparse.ArgumentTypeError(f"a label is 1-64 of [A-Za-z0-9_-] (it names a folder), got {text!r}")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.capture", description=__doc__)
    p.add_argument("source", help="rtsp:// URL, video file, or webcam index")
    p.add_argument("--label", type=_label, required=True, help="class name: the sub-folder the frames go to")
    p.add_argument("--out", type=Path, default=Path("data"), help="dataset root (default: %(default)s)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second kept (default: %(default)s)")
    p.add_argument("--count", type=int, default=100, help="frames to capture (default: %(default)s)")
    p.add_argument("--width", type=int, default=640, help="frame width after resize (default: %(default)s)")
    p.add_argument("--height", type=int, default=360, help="frame height after resize (default: %(default)s)")
    p.add_argument("--loop", action="store_true", help="files: start again at the end")
    p.add_argument("--timeout", type=float, default=30.0, help="give up after this long without a frame")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default: %(default)s)")
    p.add_argument("--backend", choices=sorted(READERS), default="pyav", help="the reader (default: %(default)s)")
    return p


def capture(args: argparse.Namespace) -> int:
    """Capture ``args.count`` frames; return how many were written."""
    spec = parse_source(args.source, loop=args.loop)
    folder = args.out / args.label
    folder.mkdir(parents=True, exist_ok=True)
    config = ReaderConfig(sample_fps=args.fps, width=args.width, height=args.height, max_retries=3)
    reader = make_reader(args.backend, "capture", spec, config)
    reader.start()
    written = 0
    last = 0
    run = secrets.token_hex(3)
    try:
        with tqdm(total=args.count, unit="frame", desc=f"{args.label} <- {redact(args.source)}") as bar:
            while written < args.count:
                frame = reader.latest(after=last, timeout=args.timeout)
                if frame is None:
                    break  # ended, failed, or silent for --timeout
                last = frame.index
                ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, args.quality])
                if not ok:
                    continue
                name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(frame.captured_at))}-{run}-{frame.index:06d}.jpg"
                tmp = folder / f".{name}.tmp"
                tmp.write_bytes(jpeg.tobytes())
                tmp.replace(folder / name)
                written += 1
                bar.update(1)
    finally:
        reader.stop()
        reader.join(10)
    if written < args.count:
        state = reader.state.value if reader.state is not StreamState.RUNNING else "silent"
        print(f"stopped after {written} of {args.count} frames: the source is {state}", file=sys.stderr)
    return written


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.count < 1 or args.fps <= 0:
        print("--count must be >= 1 and --fps > 0", file=sys.stderr)
        return 2
    try:
        written = capture(args)
    except SourceError as e:
        print(f"capture: {e}", file=sys.stderr)
        return 2
    print(f"{written} frames in {args.out / args.label}")
    return 0 if written == args.count else 1


if __name__ == "__main__":
    raise SystemExit(main())
