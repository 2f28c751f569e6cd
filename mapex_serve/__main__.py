"""``python -m mapex_serve`` / ``mapex-serve``: run the service with uvicorn on a model repository."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import uvicorn

from mapex_serve.app import create_app
from mapex_serve.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mapex-serve", description="Serve MAPEX specialists from a model repository.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--repo", help="model repository (overrides MAPEX_MODEL_REPO)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(**({"model_repo": a.repo} if a.repo else {}))
    # uvicorn's own SIGTERM handling stops accepting, lets in-flight requests finish, then runs the lifespan exit.
    uvicorn.run(create_app(settings), host=a.host, port=a.port, timeout_graceful_shutdown=settings.request_timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
