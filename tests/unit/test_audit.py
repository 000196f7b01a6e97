"""`make audit`: pip-audit over both lock files against OSV, where OSV can be reached (the
GitHub workflow runs it; this machine cannot resolve api.osv.dev), and the ignore list's
own rules everywhere."""

from __future__ import annotations

import datetime as dt
import re
import socket
import subprocess
from typing import Any

import pytest

from harness.helpers import ROOT

LOCKS = [ROOT / "requirements" / "gateway.lock", ROOT / "requirements" / "exporter.lock"]
IGNORE = ROOT / "requirements" / "audit-ignore.txt"
ENTRY = re.compile(r"(\S+)\s+expires=(\d{4}-\d{2}-\d{2})\s+(\S+==\S+)\s+(\S.{10,})")
OSV_HOST = "api.osv.dev"


def pins(lock: Any) -> set[tuple[str, str]]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock.read_text(), re.MULTILINE))


def entries() -> list[re.Match[str]]:
    lines = [line.split("#", 1)[0].strip() for line in IGNORE.read_text().splitlines()]
    return [
        ENTRY.fullmatch(line) or pytest.fail(f"audit-ignore.txt: malformed entry {line!r}") for line in lines if line
    ]


def make_audit(*args: str) -> subprocess.CompletedProcess[str]:
    # -o: the environment is what it is (no reinstall because pyproject.toml is newer)
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "audit", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_accepted_advisories_have_a_reason_and_have_not_expired() -> None:
    today = dt.date.today()
    found = entries()
    assert found, "audit-ignore.txt lists nothing: remove the file's use from the Makefile instead"
    for entry in found:
        expires = dt.date.fromisoformat(entry.group(2))
        assert expires >= today, f"{entry.group(1)} expired on {expires}: bump {entry.group(3)}, or decide again"
        assert expires <= today + dt.timedelta(days=731), f"{entry.group(1)}: an exception lasts two years at most"
        pinned = {f"{n}=={v}" for lock in LOCKS for n, v in pins(lock)}
        assert entry.group(3) in pinned, f"{entry.group(1)}: {entry.group(3)} is pinned in no lock; drop the entry"


def osv_reachable() -> bool:
    try:
        socket.create_connection((OSV_HOST, 443), timeout=5).close()
    except OSError:
        return False
    return True


def test_the_locks_have_no_unaccepted_advisories_on_osv() -> None:
    # needs OSV (api.osv.dev): CI's GitHub workflow runs `make audit` itself, with the network
    if not osv_reachable():
        pytest.skip(f"{OSV_HOST} cannot be reached from here: run `make audit` where it can")
    done = make_audit()
    assert done.returncode == 0, (
        f"make audit found advisories (bump the pin, or accept it):\n{done.stdout}{done.stderr}"
    )
