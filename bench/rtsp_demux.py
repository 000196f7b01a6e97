"""``python -m bench.rtsp_demux``: the CPU cost of demuxing RTSP with PyAV, per packet, nothing decoded.

N threads each read one RTSP stream (a GStreamer test server, 640x360 at 25 fps) and
only demux it, the way the gateway's PyAV reader does.  Arms, each on a fresh server,
in one run:

- ``interrupt``: reads bounded by PyAV's interrupt callback (``timeout=(open, read)``),
  which takes the GIL at every poll of every socket read;
- ``socket``: reads bounded by FFmpeg's own socket timeout (the ``timeout`` option),
  the open by the callback (``timeout=(open, None)``): what the reader does.

Prints packets per second and the process's CPU per packet (user and system).
"""

from __future__ import annotations

import argparse
import resource
import threading
import time

import av

from harness.peers.rtsp import RtspServer

OPTIONS = {"analyzeduration": "0", "probesize": "32", "timeout": "5000000"}


def measure(url: str, arm: str, streams: int, seconds: float, transport: str) -> str:
    counts = [0] * streams
    stop = threading.Event()

    def reader(i: int) -> None:
        with av.open(
            url,
            options={**OPTIONS, "rtsp_transport": transport},
            timeout=(5.0, 5.0 if arm == "interrupt" else None),
        ) as container:
            for _ in container.demux(container.streams.video[0]):
                counts[i] += 1
                if stop.is_set():
                    return

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
        time.sleep(0.05)  # one at a time: the shared test session does not like a stampede
    time.sleep(2.0)
    c0, r0, t0 = sum(counts), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    time.sleep(seconds)
    c1, r1, t1 = sum(counts), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    stop.set()
    for t in threads:
        t.join(10)
    user, system, packets = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, max(1, c1 - c0)
    return (
        f"{arm:9s} {transport} streams={streams:3d} packets/s={packets / (t1 - t0):6.0f} "
        f"cores={(user + system) / (t1 - t0):.3f} us/packet={(user + system) / packets * 1e6:6.1f} "
        f"(user {user / packets * 1e6:.1f}, system {system / packets * 1e6:.1f})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rtsp_demux", description=__doc__)
    p.add_argument("--streams", type=int, default=32, help="RTSP clients (default: %(default)s)")
    p.add_argument("--arms", default="interrupt,socket", help="interrupt, socket (default: %(default)s)")
    p.add_argument("--transport", default="tcp", choices=("tcp", "udp"), help="RTSP transport (default: tcp)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per arm (default: %(default)s)")
    args = p.parse_args(argv)
    for arm in args.arms.split(","):
        server = RtspServer()
        try:
            print(measure(server.url, arm, args.streams, args.seconds, args.transport), flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
