"""What the web viewer costs the gateway: its CPU with N viewers open against none, side by side.

The gateway runs ``--streams`` looped file streams (the demo clip, 2 fps sampled) against the
embedded Triton.  Each phase measures the gateway process's CPU (``/proc``) and its counters
for ``--seconds``: first with no viewer, then with ``--viewers`` Chromium pages open (Debian's
chromium driven by Playwright), spread over the streams, then with none again.  Inferences
per second must not move; the added CPU is the SSE delivery and frame.jpg encodes.

    python -m bench.viewer_cost [--viewers 10] [--streams 4] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.procstat import CpuMeter, pid
from bench.servers import ServerTuning, triton
from bench.servers import gateway as start_gateway
from gateway.ingest.demo import ensure_clip
from harness.browser import chromium
from harness.helpers import ROOT, wait_until
from harness.results import record

REPO = ROOT / "model_repository"


def counters(url: str) -> dict[str, float]:
    rows = httpx.get(f"{url}/streams", timeout=10).json()
    return {k: float(sum(r[k] for r in rows)) for k in ("inferences", "frames_encoded", "predictions")}


def phase(name: str, url: str, gateway_pid: int, seconds: float) -> dict[str, Any]:
    meter = CpuMeter({"gateway": pid(gateway_pid)})
    before, t0 = counters(url), time.monotonic()
    meter.start()
    time.sleep(seconds)  # a measurement window, not a wait for a condition
    cores = meter.cores()
    wall = time.monotonic() - t0
    after = counters(url)
    rates = {f"{k}_per_s": round((after[k] - before[k]) / wall, 2) for k in after}
    return {"phase": name, "gateway_cores": cores["gateway"], "machine_other_cores": cores["other"], **rates}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.viewer_cost", description=__doc__)
    p.add_argument("--viewers", type=int, default=10)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "viewer_cost.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        clip = ensure_clip(Path(tmp) / "demo.mp4")
        streams = [{"id": f"s{i}", "url": str(clip), "loop": True} for i in range(args.streams)]
        env = {"APP_STREAMS": json.dumps(streams), "APP_FRAME_SAMPLE_FPS": "2"}
        with (
            triton(REPO, Path(tmp), ServerTuning()) as server,
            start_gateway(server.grpc_url, Path(tmp) / "gw", extra_env=env) as gw,
        ):
            wait_until(lambda: counters(gw.url)["predictions"] >= 3 * args.streams, 60, what="every stream predicting")
            rows = [phase("no viewer", gw.url, gw.pid, args.seconds)]
            with chromium() as browser:
                pages = []
                for i in range(args.viewers):
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(f"{gw.url}/#stream=s{i % args.streams}")
                    pages.append(page)
                for page in pages:
                    page.wait_for_function("() => Number(document.querySelector('#frame').dataset.frame) > 0")
                rows.append(phase(f"{args.viewers} viewers", gw.url, gw.pid, args.seconds))
            rows.append(phase("no viewer again", gw.url, gw.pid, args.seconds))
    base = (rows[0]["gateway_cores"] + rows[2]["gateway_cores"]) / 2
    added = rows[1]["gateway_cores"] - base
    summary = {
        "viewers": args.viewers,
        "streams": args.streams,
        "gateway_cores_without": round(base, 3),
        "gateway_cores_with": rows[1]["gateway_cores"],
        "added_cores": round(added, 3),
        "added_cores_per_viewer": round(added / max(1, args.viewers), 4),
        "inferences_per_s_ratio": round(rows[1]["inferences_per_s"] / max(rows[0]["inferences_per_s"], 1e-9), 3),
    }
    print(f"\n{'phase':<18} {'gateway cores':>13} {'other cores':>11} {'inferences/s':>12} {'encodes/s':>9}")
    for r in rows:
        print(
            f"{r['phase']:<18} {r['gateway_cores']:>13} {r['machine_other_cores']:>11} "
            f"{r['inferences_per_s']:>12} {r['frames_encoded_per_s']:>9}"
        )
    print(json.dumps(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"phases": rows, "summary": summary}, indent=2) + "\n")
    record("viewer_cost", phases=rows, **summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
