#!/usr/bin/python3
"""A real RTSP server (GStreamer's gst-rtsp-server), run with the system python3 + gi.

    /usr/bin/python3 harness/peers/rtsp_server.py [--port 0] [--file clip.mp4] [--width 640 --height 360 --fps 25]
        [--gop 25] [--codec h264|h265|mjpeg]

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
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} ! rtph264pay name=pay0 pt=96 "
    "config-interval=1",
    "h265": "x265enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} ! rtph265pay name=pay0 pt=96 "
    "config-interval=1",
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
    args = p.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    if args.file:
        launch = f'( filesrc location="{args.file}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 )'
        factory.set_shared(False)
    else:
        launch = (
            f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={args.width},height={args.height},"
            f"framerate={args.fps}/1 ! {ENCODERS[args.codec].format(gop=args.gop or args.fps)} )"
        )
        factory.set_shared(True)
    factory.set_launch(launch)
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
