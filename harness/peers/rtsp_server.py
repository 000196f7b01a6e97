#!/usr/bin/python3
"""A real RTSP server (GStreamer's gst-rtsp-server), run with the system python3 + gi.

    /usr/bin/python3 harness/peers/rtsp_server.py [--port 0] [--file clip.mp4] [--width 640 --height 360 --fps 25]
        [--gop 25] [--codec h264|h265|mjpeg] [--kbps 2048] [--pattern ball] [--mounts 1 --shared-file]

Serves ``rtsp://127.0.0.1:PORT/test``: a live test pattern encoded with x264 (or x265,
or JPEG: ``--codec h265|mjpeg``) and shared by all clients (a keyframe every ``--gop``
frames; every JPEG frame is one), or an H.264 MP4 sent
without re-encoding (from the start for each client, then end of stream).  Prints ``PORT <n>`` once it listens; exits
on SIGTERM/SIGINT.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

# The live pattern's encoder and payloader per codec (JPEG has no GOP: every frame is a keyframe).
ENCODERS = {
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate={kbps} ! rtph264pay "
    "name=pay0 pt=96 config-interval=1",
    "h265": "x265enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate={kbps} ! rtph265pay "
    "name=pay0 pt=96 config-interval=1",
    "mjpeg": "videoconvert ! video/x-raw,format=I420 ! jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26",
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--file")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--gop", type=int, default=0, help="frames from one keyframe to the next (default: --fps)")
    p.add_argument("--codec", choices=sorted(ENCODERS), default="h264", help="the live pattern's codec")
    p.add_argument("--kbps", type=int, default=2048, help="H.264/H.265 bitrate cap in kbit/s (x264enc's default)")
    p.add_argument(
        "--pattern", default="ball", help="videotestsrc's pattern: ball (a few kbit/s), snow (fills --kbps), ..."
    )
    p.add_argument(
        "--mounts", type=int, default=1, help="--file: serve the clip at /test, /test1, ... /test{N-1} (default: 1)"
    )
    p.add_argument(
        "--shared-file",
        action="store_true",
        help="--file: each mount plays the clip once, shared by its clients from when its first client joined "
        "(default: a replay from the start for each client)",
    )
    p.add_argument(
        "--config-interval",
        type=int,
        default=0,
        help="--file: rtph264pay's config-interval: -1 sends SPS/PPS in-band before every keyframe (default: 0)",
    )
    args = p.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    if args.file:
        pay = f"rtph264pay name=pay0 pt=96 config-interval={args.config_interval}"
        launch = f'( filesrc location="{args.file}" ! qtdemux ! h264parse ! {pay} )'
        for i in range(args.mounts):
            factory = GstRtspServer.RTSPMediaFactory()
            factory.set_launch(launch)
            factory.set_shared(args.shared_file)
            server.get_mount_points().add_factory(f"/test{i or ''}", factory)
    else:
        launch = (
            f"( videotestsrc is-live=true pattern={args.pattern} ! video/x-raw,width={args.width},height={args.height},"
            f"framerate={args.fps}/1 ! {ENCODERS[args.codec].format(gop=args.gop or args.fps, kbps=args.kbps)} )"
        )
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        factory.set_shared(True)
        server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        print("could not bind", file=sys.stderr)
        return 1
    print(f"PORT {server.get_bound_port()}", flush=True)
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    loop.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
