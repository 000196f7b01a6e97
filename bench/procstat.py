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


def machine_busy() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / _TICK


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
    """``start()`` then ``cores()``: CPU seconds per wall second for each named set of processes.

    ``total`` sums them; ``other`` is the rest of the machine's busy time over the same span.
    """

    selectors: dict[str, Selector]
    _t0: float = 0.0
    _busy0: float = 0.0
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
        self._busy0 = machine_busy()
        self._t0 = time.monotonic()

    def cores(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._t0, 1e-9)
        busy = (machine_busy() - self._busy0) / wall
        after = self._sample()
        result = {}
        for name, now in after.items():
            before = self._before.get(name, {})
            used = sum(cpu - before.get(p, 0.0) for p, cpu in now.items())
            result[name] = round(used / wall, 3)
        ours = sum(result.values())
        result["total"] = round(ours, 3)
        # Anything else on the machine (other jobs): a large value means this level was disturbed.
        result["other"] = round(max(0.0, busy - ours), 3)
        return result
