"""``mapex-serve``: run the service (``serve``, the default) or send it a whole scene as a job (``predict``).

    mapex-serve --repo models                                    # serve (as before: serve is the default)
    mapex-serve predict S1.tif --task flood --out flood.tif --geojson flood.geojson --server http://host:8000
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import get_args


def serve(argv: Sequence[str]) -> int:
    import uvicorn

    from mapex_serve.app import create_app
    from mapex_serve.cores import service_processes
    from mapex_serve.settings import Settings

    p = argparse.ArgumentParser(prog="mapex-serve [serve]", description="Serve MAPEX specialists from a model repository.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--repo", help="model repository (overrides MAPEX_MODEL_REPO)")
    p.add_argument("--no-access-log", dest="access_log", action="store_false",
                   help="no line a request (as the Docker image, docker/logging.json; /metrics counts requests)")
    p.add_argument("--workers", type=int, help="service processes (default: UVICORN_WORKERS, else 1), each with its "
                   "own event loop and engines and a share of the cores; whole-scene jobs need a single process")
    a = p.parse_args(argv)
    if a.workers is not None and a.workers < 1:
        p.error(f"--workers must be at least 1, not {a.workers}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.repo:
        os.environ["MAPEX_MODEL_REPO"] = a.repo  # several processes each read their settings from the environment
    if a.workers is not None:
        os.environ["UVICORN_WORKERS"] = str(a.workers)  # and share the cores by it (cores.service_processes)
    settings = Settings()
    # uvicorn's own SIGTERM handling stops accepting, lets in-flight requests finish, then runs the lifespan exit.
    common = {"host": a.host, "port": a.port, "access_log": a.access_log,
              "timeout_graceful_shutdown": settings.request_timeout_s}
    if service_processes() > 1:
        uvicorn.run("mapex_serve.app:create_app", factory=True, workers=service_processes(), **common)
    else:
        uvicorn.run(create_app(settings), **common)
    return 0


def predict(argv: Sequence[str]) -> int:
    from mapex_serve.client import JobFailedError, run_predict
    from mapex_serve.units import BackscatterChoice, PixelSizeChoice, ReflectanceChoice

    p = argparse.ArgumentParser(prog="mapex-serve predict", description="Run a whole scene as a job on a mapex-serve "
                                "service: submit, follow its progress, download the results.")
    p.add_argument("scene", help="a local raster file, or an http(s)://, s3:// or gs:// URL the service can read")
    p.add_argument("--task", required=True, help="the task, e.g. flood")
    p.add_argument("--out", required=True, help="where to write the result GeoTIFF (a COG)")
    p.add_argument("--geojson", help="also write the mask's polygons here (GeoJSON, WGS84)")
    p.add_argument("--server", default=os.environ.get("MAPEX_SERVER", "http://127.0.0.1:8000"),
                   help="the service's URL (default: $MAPEX_SERVER or http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=os.environ.get("MAPEX_API_KEY"), help="default: $MAPEX_API_KEY")
    p.add_argument("--bands", help="names of the bands in order, e.g. VV,VH")
    p.add_argument("--modality", help="force the specialist of this modality")
    # The reading options the service's 422s name (units=, scale=, offset=, pixel_size=, reflectance=,
    # backscatter=).
    p.add_argument("--units", help="unit of the values, for every band or per band: dB, linear, amplitude, "
                                   "reflectance, m, ft (VV:linear,VH:linear)")
    p.add_argument("--scale", help="physical = stored x scale + offset, e.g. 0.0001 (or per band: B04:0.0001)")
    p.add_argument("--offset", help="added after scale, e.g. -0.1")
    p.add_argument("--pixel-size", choices=get_args(PixelSizeChoice),
                   help="a scene whose pixels are not the size the specialist learned: model resamples it to that "
                        "size, native reads it as it is")
    p.add_argument("--reflectance", choices=get_args(ReflectanceChoice),
                   help="as-is: run Sentinel-2 files of the other processing level than the specialist learned")
    p.add_argument("--backscatter", choices=get_args(BackscatterChoice),
                   help="as-is: run Sentinel-1 files of the other backscatter (sigma0, gamma0) than the specialist "
                        "learned")
    p.add_argument("--bbox", help="the part of the scene to read: west,south,east,north in degrees (WGS84)")
    p.add_argument("--aoi", type=argparse.FileType("r", encoding="utf-8"),
                   help="a GeoJSON file of the polygon of interest (WGS84): the box around it is read, the pixels "
                        "outside it masked")
    p.add_argument("--simplify", type=float, help="polygon simplification tolerance (the scene CRS's units)")
    p.add_argument("--min-area-m2", type=float, help="drop polygons smaller than this")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    options = {k: v for k, v in {"bands": a.bands, "modality": a.modality, "units": a.units, "scale": a.scale,
                                 "offset": a.offset, "pixel_size": a.pixel_size, "reflectance": a.reflectance,
                                 "backscatter": a.backscatter, "bbox": a.bbox,
                                 "aoi": a.aoi.read() if a.aoi else None,
                                 "simplify": a.simplify, "min_area_m2": a.min_area_m2}.items() if v is not None}
    try:
        job = run_predict(a.scene, a.task, a.out, a.geojson, a.server, a.api_key, options, quiet=a.quiet)
    except (JobFailedError, OSError) as e:
        print(f"mapex-serve predict: {e}", file=sys.stderr)
        return 1
    print(f"job {job['id']} done: {a.out}" + (f", {a.geojson}" if a.geojson else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "predict":
        return predict(args[1:])
    return serve(args[1:] if args and args[0] == "serve" else args)


if __name__ == "__main__":
    sys.exit(main())
