"""Start, wait for, and stop a real ``tritonserver`` process.

``stop()`` is idempotent and registered with ``atexit``; the server runs in its own
process group (so its python-backend stubs go with it) and receives SIGTERM if
the process that started it dies (``PR_SET_PDEATHSIG``).  Nothing is orphaned.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from embedded_triton import repository
from embedded_triton.repository import CpuOptions

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PROBE = r"""
import json, sys, sysconfig, pathlib, pytriton
print(json.dumps({
        "libdir": sysconfig.get_config_var("LIBDIR"),
    "version": f"{sys.version_info[0]}.{sys.version_info[1]}",
    "pytriton": str(pathlib.Path(pytriton.__file__).parent),
}))
"""


class TritonStartError(RuntimeError):
    """The server could not be started or did not become ready."""


@dataclass(frozen=True)
class TritonPorts:
    grpc: int = 8001
    http: int = 8003
    metrics: int = 8002


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's ``tritonserver`` lives, and the Python its stub embeds."""

    server: Path
    backends: Path
    bin_dir: str  # the environment's bin/: first on PATH, it makes the stub's embedded Python that venv
    libdir: str  # the directory of the interpreter's libpython, first on LD_LIBRARY_PATH

    @classmethod
    def discover(cls, venv: Path) -> TritonInstall:
        python = venv / "bin" / "python"
        if not python.exists():
            raise TritonStartError(f"no Python environment at {venv}; run `make setup`")
        try:
            out = subprocess.run([str(python), "-c", _PROBE], check=True, capture_output=True, text=True, timeout=60)
        except subprocess.CalledProcessError as e:
            raise TritonStartError(f"{venv} lacks nvidia-pytriton: {e.stderr.strip()[-500:]}") from e
        info = json.loads(out.stdout)
        root = Path(info["pytriton"]) / "tritonserver"
        backends = root / "backends"
        stub = backends / "python" / "triton_python_backend_stub"
        wanted = root / "python_backend_stubs" / info["version"] / "triton_python_backend_stub"
        if not wanted.exists():
            raise TritonStartError(f"nvidia-pytriton ships no python backend stub for Python {info['version']}")
        if not stub.exists() or stub.stat().st_size != wanted.stat().st_size:
            shutil.copy2(wanted, stub)  # the backend looks for its stub beside libtriton_python.so
        libpython = Path(info["libdir"]) / f"libpython{info['version']}.so.1.0"
        if not libpython.exists():
            raise TritonStartError(
                f"{libpython} not found: the python backend stub needs a shared libpython "
                "(build Python with --enable-shared, as pyenv's default builds on this project's machines are)"
            )
        return cls(
            server=root / "bin" / "tritonserver", backends=backends, bin_dir=str(venv / "bin"), libdir=info["libdir"]
        )


def die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class EmbeddedTriton:
    model_repository: Path
    work_dir: Path
    venv: Path = Path(".venv-triton")
    ports: TritonPorts = field(default_factory=TritonPorts)
    host: str = "127.0.0.1"
    cpu: CpuOptions = field(default_factory=CpuOptions)
    log_verbose: int = 0
    watch_s: float = 2.0  # how often the source repository is checked for new versions; 0: never
    extra_args: tuple[str, ...] = ()  # more tritonserver flags (e.g. --http-restricted-api=...)
    admin_header: tuple[str, str] | None = None  # sent with model-control calls when that API is restricted
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _seen: dict[str, tuple[object, ...]] = field(default_factory=dict, init=False, repr=False)
    _names: dict[str, str] = field(default_factory=dict, init=False, repr=False)  # directory -> model name
    _watch_stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _watcher: threading.Thread | None = field(default=None, init=False, repr=False)
    _sync_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _install: TritonInstall | None = field(default=None, init=False, repr=False)
    restarts: int = field(default=0, init=False)  # supervised restarts after an unexpected exit

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/metrics"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "tritonserver.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self, install: TritonInstall) -> list[str]:
        return [
            str(install.server),
            f"--model-repository={(self.work_dir / 'repository').resolve()}",
            f"--backend-directory={install.backends}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
            # Explicit model control: every model at start-up, then a new version is loaded
            # when `sync()` has re-derived it (a poll could catch a half-derived directory).
            "--model-control-mode=explicit",
            "--load-model=*",
            "--disable-auto-complete-config",
            "--exit-timeout-secs=5",
            f"--log-verbose={self.log_verbose}",
            # One stub shm region holds a whole batch (32 x 150 KB in, 2 x 32 x 4 KB out) without growth.
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=8388608",
            *self.extra_args,
        ]

    def start(self) -> None:
        with self._lock:
            if self._proc is not None:
                return
            self._install = TritonInstall.discover(self.venv.resolve())
            self.work_dir.mkdir(parents=True, exist_ok=True)
            models = repository.build(self.model_repository, self.work_dir / "repository", self.cpu)
            self._seen = {d.name: repository.fingerprint(d) for d in repository.model_dirs(self.model_repository)}
            self._names = dict(zip(self._seen, models, strict=True))
            log.info("starting tritonserver (models: %s)", ", ".join(models))
            self._proc = self._spawn(self._install)
            atexit.register(self.stop)
            if self.watch_s > 0:
                self._watch_stop.clear()
                self._watcher = threading.Thread(target=self._watch, name="triton-repo-watch", daemon=True)
                self._watcher.start()

    def _spawn(self, install: TritonInstall) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (install.libdir, env.get("LD_LIBRARY_PATH")) if p)
        # The stub's embedded interpreter ignores PYTHONPATH, but it finds its prefix through
        # `python3` on PATH: the venv's comes first, so its site-packages (numpy<2, onnxruntime)
        # are used and the system's are not.
        env["PATH"] = os.pathsep.join(p for p in (install.bin_dir, env.get("PATH")) if p)
        for var in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV"):
            env.pop(var, None)
        cmd = self.command(install)
        log.info("tritonserver command: %s", " ".join(cmd))
        with self.log_path.open("ab") as out:
            return subprocess.Popen(
                cmd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl
            )

    def exit_code(self) -> int | None:
        """The server's exit status once it has exited on its own; None while it runs (or was stopped)."""
        proc = self._proc
        return None if proc is None else proc.poll()

    def restart(self) -> None:
        """Sweep what is left of the server's process group (its stubs) and start it again on the
        same ports and derived repository.  The repository watcher keeps running."""
        with self._lock:
            if self._install is None:
                raise TritonStartError("restart() before start()")
            proc, self._proc = self._proc, None
            if proc is not None:
                _stop_group(proc, timeout=5.0)
            self.restarts += 1
            log.warning("restarting tritonserver (restart %d)", self.restarts)
            self._proc = self._spawn(self._install)

    def _watch(self) -> None:
        """Load new or changed models until stopped; never lets an error end the thread."""
        while not self._watch_stop.wait(self.watch_s):
            if self._proc is None:
                continue
            try:
                self.sync()
            except Exception:  # logged; the next round tries again
                log.exception("model repository sync failed")

    def sync(self) -> dict[str, str]:
        """Re-derive every model whose source changed, and load it; unload removed ones.

        Returns ``{model: "loaded" | "unloaded" | "failed: ..."}`` for what changed.
        With ``version_policy latest 1`` Triton loads the new version next to the old
        one and retires the old one when it is ready: requests keep being answered.  A
        failed load leaves the model as it was (Triton keeps serving what it had)."""
        with self._sync_lock:
            return self._sync()

    def _sync(self) -> dict[str, str]:
        source = self.model_repository.resolve()
        target = self.work_dir / "repository"
        current = {d.name: d for d in repository.model_dirs(source)}
        results: dict[str, str] = {}
        for dirname, model_dir in current.items():
            fp = repository.fingerprint(model_dir)
            if self._seen.get(dirname) == fp:
                continue
            self._seen[dirname] = fp  # a broken export is reported once, not every round
            try:
                name = repository.rebuild_model(model_dir, target, self.cpu)
                self._names[dirname] = name
                self._repository_call(name, "load")
                results[name] = "loaded"
                log.info("loaded %s from %s", name, model_dir)
            except (repository.RepositoryError, TritonStartError, OSError) as e:
                results[dirname] = f"failed: {e}"
                log.error("could not load %s: %s", dirname, e)
        for dirname in sorted(set(self._seen) - set(current)):
            del self._seen[dirname]
            name = self._names.pop(dirname, dirname)
            try:
                self._repository_call(name, "unload")
                results[name] = "unloaded"
                log.info("unloaded %s (its directory is gone)", name)
            except TritonStartError as e:
                results[name] = f"failed: {e}"
                log.error("could not unload %s: %s", name, e)
        return results

    def _repository_call(self, name: str, action: str, timeout: float = 300.0) -> None:
        """POST /v2/repository/models/<name>/load|unload (Triton's model-control API)."""
        url = f"{self.http_url}/v2/repository/models/{urllib.parse.quote(name)}/{action}"
        headers = dict([self.admin_header]) if self.admin_header else {}
        request = urllib.request.Request(url, data=b"", method="POST", headers=headers)  # noqa: S310 - loopback
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:  # noqa: S310
                r.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            with contextlib.suppress(ValueError, KeyError, TypeError):
                detail = json.loads(detail)["error"]
            raise TritonStartError(f"Triton refused to {action} {name}: {detail}") from e
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            raise TritonStartError(f"could not reach Triton to {action} {name}: {e}") from e

    def wait_ready(self, timeout: float = 120.0, cancel: threading.Event | None = None) -> bool:
        """Block until the server answers ready (True), or ``cancel`` is set (False).
        Raises ``TritonStartError`` when it exits or is not ready within ``timeout``."""
        deadline = time.monotonic() + timeout
        url = f"{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                return False
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise TritonStartError(f"tritonserver exited (code {code}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback URL we built
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TritonStartError(f"tritonserver not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left. Safe to call twice."""
        self._watch_stop.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout)
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        _stop_group(proc, timeout)

    def __enter__(self) -> EmbeddedTriton:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after ``timeout``."""
    pgid = proc.pid  # start_new_session: the server leads its own group
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            log.warning("tritonserver did not exit after %s; escalating", sig.name)
    # The stubs are in the same group: sweep anything that outlived the server.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
