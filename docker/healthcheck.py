"""Container health check: GET a path of the local service; exit 0 on 2xx, 1 otherwise.

    python healthcheck.py /healthz     # Docker HEALTHCHECK (live)
    python healthcheck.py /readyz      # compose healthcheck (engines warm)

The images carry no curl; this needs only the standard library and reads the port uvicorn was given.
"""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
    url = f"http://127.0.0.1:{os.environ.get('UVICORN_PORT', '8000')}{path}"
    try:
        with urllib.request.urlopen(url, timeout=float(os.environ.get("HEALTHCHECK_TIMEOUT_S", "4"))) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as e:  # HTTPError (503 while warming up) is a URLError
        print(f"{url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
