"""The container healthcheck: ``python -m gateway.healthcheck [PATH]`` exits 0 when the
gateway answers 200 on ``PATH`` (default ``/health``, liveness), 1 otherwise.

Docker's ``HEALTHCHECK`` and compose's ``healthcheck`` run it inside the gateway image,
which has no curl; it reads the port the gateway listens on from ``APP_SERVER__PORT``.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else "/health"
    port = os.environ.get("APP_SERVER__PORT", "8000")
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
            ok = r.status == 200
    except (urllib.error.URLError, OSError) as e:
        print(f"healthcheck: {url}: {e}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
