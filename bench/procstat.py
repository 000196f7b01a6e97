"""CPU time of processes from ``/proc/<pid>/stat``: who used the 2 cores during a level."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_STUB = "triton_python"  # comm of triton_python_backend_stub, cut to 15 characters


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(comm, process group, user+system CPU seconds), or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    # after "pid (comm) ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    return comm, int(rest[2]), (int(rest[11]) + int(rest[12])) / _TICK


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def group_pids(pgid: int, stub: bool | None = None) -> list[int]:
    """Processes of a group; ``stub`` True/False keeps only/drops the python backend stubs."""
    out = []
    for pid in _all_pids():
        st = _stat(pid)
        if st is None or st[1] != pgid:
            continue
        if stub is None or stub == st[0].startswith(_STUB):
            out.append(pid)
    return out


def stub_pids(pgid: int) -> list[int]:
    return group_pids(pgid, stub=True)


Selector = Callable[[], list[int]]


def pid(p: int) -> Selector:
    return lambda: [p]


@dataclass
class CpuMeter:
    """``start()`` then ``cores()``: CPU seconds per wall second for each named set of processes."""

    selectors: dict[str, Selector]
    _t0: float = 0.0
    _before: dict[str, dict[int, float]] = field(default_factory=dict)

    def _sample(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for name, select in self.selectors.items():
            out[name] = {}
            for p in select():
                st = _stat(p)
                if st is not None:
                    out[name][p] = st[2]
        return out

    def start(self) -> None:
        self._before = self._sample()
        self._t0 = time.monotonic()

    def cores(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._t0, 1e-9)
        after = self._sample()
        result = {}
        for name, now in after.items():
            before = self._before.get(name, {})
            used = sum(cpu - before.get(p, 0.0) for p, cpu in now.items())
            result[name] = round(used / wall, 3)
        result["total"] = round(sum(result.values()), 3)
        return result
