"""Start and control the GStreamer RTSP server (harness/peers/rtsp_server.py)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).with_name("rtsp_server.py")


class RtspServer:
    def __init__(
        self,
        *,
        port: int = 0,
        file: Path | None = None,
        fps: int = 25,
        gop: int = 0,
        codec: str = "h264",
        kbps: int = 2048,
        pattern: str = "ball",
        mounts: int = 1,
        shared_file: bool = False,
        config_interval: int = 0,
    ) -> None:
        cmd = [SYSTEM_PYTHON, str(SCRIPT), "--port", str(port), "--fps", str(fps), "--gop", str(gop)]
        cmd += ["--codec", codec, "--kbps", str(kbps), "--pattern", pattern, "--mounts", str(mounts)]
        cmd += ["--shared-file"] if shared_file else []
        cmd += ["--config-interval", str(config_interval)]
        if file is not None:
            cmd += ["--file", str(file)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "PORT n" once it listens
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(
                f"RTSP server did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
        self.port = int(line.split()[1])
        self.url = f"rtsp://127.0.0.1:{self.port}/test"
        self.urls = [f"{self.url}{i or ''}" for i in range(mounts)]  # --file: every mount

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
