"""``python -m bench.rtsp_demux``: the CPU cost of reading RTSP with PyAV, per packet (frame).

N threads each read one RTSP stream (a GStreamer test server, 640x360 at 25 fps: the
live rig of ``bench.stream_density``, every client's keyframes at the same instant, or
with ``--rig phased`` a pre-encoded clip (GOP 25) at 16 mount points joined in turn, so
keyframes come in 16 phases, as cameras' do).  Arms, each on a fresh server, in one run:

- ``interrupt``: demux only, reads bounded by PyAV's interrupt callback
  (``timeout=(open, read)``), which takes the GIL at every poll of every socket read;
- ``socket``: demux only, reads bounded by FFmpeg's own socket timeout (the ``timeout``
  option), the open by the callback (``timeout=(open, None)``): what the reader does;
- ``reader``: the gateway's ``PyAvReader`` at 1 fps (keyframe mode: demux, and one
  keyframe a second decoded, converted and published), no gateway around it, reading
  between keyframes in bursts (``ingest.burst_kib``, the default);
- ``reader-each``: the same reader waking for each frame as it arrives (``burst_kib: 0``);
- ``reader-2fps``: the reader at 2 fps on ``auto``: all-frames mode, each GOP decoded
  only up to its last sample (two samples converted a second);
- ``reader-2fps-all``: the same with ``decode: all``: every frame decoded.

Each arm runs at every ``--kbps`` (the encoder's bitrate cap; ``--pattern snow`` fills
it, the default ball needs ~140 kbit/s).  ``--processes K`` spreads the N streams over
K processes of N/K threads each (is the cost the GIL's?), measured once all have
opened their streams; their CPU is read from /proc, and packets are counted as 25 per
stream per second.

Prints kbit/s per stream, packets per second, and the CPU per packet (user and
system) and per stream.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

import av

from gateway.ingest import PyAvReader, ReaderConfig, parse_source
from harness.peers.clips import write_clip
from harness.peers.rtsp import RtspServer

OPTIONS = {"analyzeduration": "0", "probesize": "32", "timeout": "5000000"}
CAMERA_FPS = 25
MOUNTS = 16  # --rig phased: mount points, each shared from when its first client joined
STAGGER_S = 0.05  # clients join one at a time: the shared test session does not like a stampede
WARMUP_S = 3.5  # before measuring: at 2 fps, three keyframes show a regular GOP, which the reader then cuts
READERS: dict[str, tuple[float, Literal["auto", "all"], int]] = {  # arm -> sample_fps, decode, burst_kib
    "reader": (1, "auto", ReaderConfig.burst_kib),
    "reader-each": (1, "auto", 0),
    "reader-2fps": (2, "auto", ReaderConfig.burst_kib),
    "reader-2fps-all": (2, "all", ReaderConfig.burst_kib),
}


class Load:
    """``streams`` readers in this process, round-robin over ``urls``, counting packets and bytes."""

    def __init__(self, urls: list[str], arm: str, streams: int, transport: str) -> None:
        self.counts, self.sizes = [0] * streams, [0] * streams
        self.stop = threading.Event()
        self.readers: list[PyAvReader] = []
        self.threads: list[threading.Thread] = []
        for i in range(streams):
            url = urls[i % len(urls)]
            if arm in READERS:
                fps, decode, burst = READERS[arm]
                cfg = ReaderConfig(
                    sample_fps=fps, width=640, height=360, rtsp_transport=transport, burst_kib=burst, decode=decode
                )
                self.readers.append(PyAvReader(f"s{i}", parse_source(url), cfg))
                self.readers[-1].start()
            else:
                t = threading.Thread(target=self._demux, args=(url, arm, transport, i), daemon=True)
                self.threads.append(t)
                t.start()
            time.sleep(STAGGER_S)

    def _demux(self, url: str, arm: str, transport: str, i: int) -> None:
        with av.open(
            url,
            options={**OPTIONS, "rtsp_transport": transport},
            timeout=(5.0, 5.0 if arm == "interrupt" else None),
        ) as container:
            for packet in container.demux(container.streams.video[0]):
                self.counts[i] += 1
                self.sizes[i] += packet.size
                if self.stop.is_set():
                    return

    def packets(self) -> tuple[int, int | None]:
        """Packets read so far, and their bytes (None where the reader does not count them)."""
        if self.readers:
            return sum(r.stats.frames_read for r in self.readers), None
        return sum(self.counts), sum(self.sizes)

    def close(self) -> None:
        self.stop.set()
        for r in self.readers:
            r.stop()
        for r in self.readers:
            r.join(10)
        for t in self.threads:
            t.join(10)


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(urls: list[str], arm: str, streams: int, *, seconds: float, transport: str, processes: int) -> str:
    if processes > 1:
        return _measure_processes(urls, arm, streams, seconds=seconds, transport=transport, processes=processes)
    load = Load(urls, arm, streams, transport)
    try:
        time.sleep(WARMUP_S)
        (c0, b0), r0, t0 = load.packets(), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        time.sleep(seconds)
        (c1, b1), r1, t1 = load.packets(), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    finally:
        load.close()
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    kbps = None if b0 is None or b1 is None else (b1 - b0) * 8 / 1000 / (t1 - t0) / streams
    return _line(arm, transport, streams, 1, kbps=kbps, packets=max(1, c1 - c0), wall=t1 - t0, user=user, system=system)


def _measure_processes(
    urls: list[str], arm: str, streams: int, *, seconds: float, transport: str, processes: int
) -> str:
    per = streams // processes
    cmd = [sys.executable, "-m", "bench.rtsp_demux", "--child", ",".join(urls), "--arms", arm, "--streams", str(per)]
    children = []
    try:
        for _ in range(processes):
            children.append(subprocess.Popen([*cmd, "--transport", transport], stdout=subprocess.PIPE, text=True))
        for c in children:  # each has imported everything and opened its streams
            assert c.stdout is not None
            if c.stdout.readline().strip() != "ready":
                raise RuntimeError("a reader process did not start")
        time.sleep(WARMUP_S)
        c0, t0 = sum(_cpu_s(c.pid) for c in children), time.monotonic()
        time.sleep(seconds)
        c1, t1 = sum(_cpu_s(c.pid) for c in children), time.monotonic()
    finally:
        for c in children:
            c.kill()
            c.wait()
    packets = int(per * processes * CAMERA_FPS * (t1 - t0))  # live streams at 25 fps
    return _line(arm, transport, per * processes, processes, kbps=None, packets=packets, wall=t1 - t0, user=c1 - c0)


def _line(
    arm: str,
    transport: str,
    streams: int,
    processes: int,
    *,
    kbps: float | None,
    packets: int,
    wall: float,
    user: float,
    system: float | None = None,
) -> str:
    cpu = user + (system or 0.0)
    split = "" if system is None else f" (user {user / packets * 1e6:.1f}, system {system / packets * 1e6:.1f})"
    rate = "     " if kbps is None else f"{kbps:5.0f}"
    return (
        f"{arm:11s} {transport} streams={streams:3d} processes={processes:2d} kbit/s/stream={rate} "
        f"packets/s={packets / wall:6.0f} cores={cpu / wall:.3f} us/packet={cpu / packets * 1e6:6.1f}{split} "
        f"millicores/stream={cpu / wall / streams * 1000:4.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rtsp_demux", description=__doc__)
    p.add_argument("--streams", type=int, default=32, help="RTSP clients (default: %(default)s)")
    p.add_argument(
        "--arms",
        default="interrupt,socket",
        help="interrupt, socket, reader, reader-each, reader-2fps, reader-2fps-all (default: %(default)s)",
    )
    p.add_argument("--rig", default="live", choices=("live", "phased"), help="what the server sends (default: live)")
    p.add_argument("--transport", default="tcp", choices=("tcp", "udp"), help="RTSP transport (default: tcp)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per arm (default: %(default)s)")
    p.add_argument("--kbps", default="2048", help="the server's bitrate caps, comma-separated (default: %(default)s)")
    p.add_argument("--pattern", default="ball", help="the test pattern: ball (~140 kbit/s), snow (fills the cap)")
    p.add_argument("--processes", type=int, default=1, help="processes to spread the streams over (default: 1)")
    p.add_argument("--child", metavar="URLS", help=argparse.SUPPRESS)  # one of --processes: read until killed
    args = p.parse_args(argv)
    if args.child:
        Load(args.child.split(","), args.arms, args.streams, args.transport)
        print("ready", flush=True)
        threading.Event().wait()
    with tempfile.TemporaryDirectory(prefix="rtsp-demux-") as work:
        clip = None
        if args.rig == "phased":  # a keyframe a second; long enough for every arm's run
            clip = write_clip(Path(work) / "camera.mp4", seconds=int(args.seconds) + 60, fps=CAMERA_FPS)
        for kbps in (int(k) for k in args.kbps.split(",")):
            for arm in args.arms.split(","):
                if clip is None:
                    server = RtspServer(kbps=kbps, pattern=args.pattern)
                else:
                    server = RtspServer(fps=CAMERA_FPS, gop=CAMERA_FPS, file=clip, mounts=MOUNTS, shared_file=True)
                try:
                    how = {"seconds": args.seconds, "transport": args.transport, "processes": args.processes}
                    line = measure(server.urls, arm, args.streams, **how)
                    print(f"{args.rig:6s} {line}", flush=True)
                finally:
                    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
