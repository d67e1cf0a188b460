"""Container health probe: GET a path on this container's own port; exit 0 on HTTP 200, else 1.

    python healthcheck.py /healthz            # the API (port from ELASTICSR_PORT, default 8000)
    python healthcheck.py /healthz 9100       # the worker's health/metrics port

Python rather than curl because the runtime image carries no curl (one less package to patch).
"""

import os
import sys
import urllib.request


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
    port = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("ELASTICSR_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=4) as resp:
            return 0 if resp.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
