"""Figures measured by reliability tests and chaos runs, kept for ``docs/reliability.md``.

``record(scenario, **figures)`` writes ``<dir>/<scenario>.json`` (dir: ``STREAMML_RESULTS``,
default ``build/reliability``) and prints the figures, so a test run leaves the
numbers it checked next to its verdict; ``python -m harness.results`` prints them all.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def results_dir() -> Path:
    return Path(os.environ.get("STREAMML_RESULTS", ROOT / "build" / "reliability"))


def record(scenario: str, **figures: object) -> Path:
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{scenario}.json"
    body = {"scenario": scenario, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    path.write_text(json.dumps(body, indent=2) + "\n")
    print(f"[reliability] {scenario}: {json.dumps(figures)}", file=sys.stderr)
    return path


def main() -> int:
    for path in sorted(results_dir().glob("*.json")):
        body = json.loads(path.read_text())
        figures = ", ".join(f"{k}={v}" for k, v in body.items() if k not in ("scenario", "at"))
        print(f"{body['scenario']:<24} {body['at']}  {figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
