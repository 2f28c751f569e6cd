"""The FastAPI application: an app factory whose lifespan opens and warms the engines.

Routes: ``POST /predict/{task}``, ``GET /healthz`` (live), ``GET /readyz`` (engines warm),
``GET /models``, the Open Inference Protocol (``/v2/health/*``, ``/v2/models/{name}[/ready|/infer]``)
and ``GET /metrics``. Every error the service raises on purpose is a MapexError, mapped to an HTTP
status in one handler with a message that says what was wrong and what would be accepted.
"""


import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from mapex_serve.batcher import Batcher, QueueFullError
from mapex_serve.engine import EngineInputError
from mapex_serve.errors import DuplicateBandError, MapexError, UnknownBandError, UnknownModalityError
from mapex_serve.inputs import ForbiddenReferenceError, GridMismatchError, SubdatasetsError, UnreadableInputError
from mapex_serve.metrics import Metrics
from mapex_serve.predict import RasterTooLargeError, UnreadableRasterError, predict
from mapex_serve.rasters import BandIdentityConflictError, BandNamesMissingError
from mapex_serve.registry import Registry
from mapex_serve.responses import as_geotiff, as_json, inputs_summary
from mapex_serve.routing import NoMatchingSpecialistError
from mapex_serve.settings import Settings
from mapex_serve.units import ImplausibleValuesError, UnitError, UnitOverrides
from mapex_serve.upload import UnsupportedMediaTypeError, UploadTooLargeError, read_upload

__all__ = ["create_app"]

log = logging.getLogger("mapex_serve")


class UnknownTaskError(MapexError, LookupError):
    """A task no serving specialist does."""


class UnknownModelError(MapexError, LookupError):
    """A model name the repository does not serve."""


class RequestTimeoutError(MapexError, TimeoutError):
    """A request that ran past MAPEX_REQUEST_TIMEOUT_S."""


STATUS: dict[type[MapexError], int] = {
    UnreadableRasterError: 400, UnreadableInputError: 400, ForbiddenReferenceError: 400,
    UnknownTaskError: 404, UnknownModelError: 404, UploadTooLargeError: 413, RasterTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    BandNamesMissingError: 422, BandIdentityConflictError: 422, NoMatchingSpecialistError: 422, UnknownBandError: 422,
    EngineInputError: 422, DuplicateBandError: 422, UnknownModalityError: 422, GridMismatchError: 422,
    SubdatasetsError: 422, UnitError: 422, ImplausibleValuesError: 422,
    QueueFullError: 503, RequestTimeoutError: 504,
}


def status_of(error: MapexError) -> int:
    return next((code for cls, code in STATUS.items() if isinstance(error, cls)), 400)


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["FP32"] = "FP32"
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[InferTensor]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service over ``settings.model_repo``; engines open and warm up in the lifespan."""
    settings = settings or Settings()
    metrics = Metrics()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
    state: dict[str, Any] = {"registry": None, "batchers": {}}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        registry = await run_in_threadpool(Registry.load, settings, warm_up=False)
        for r in registry.refused:
            log.warning("refused %s: %s", r.entry, r.reason)
        state["registry"] = registry
        await run_in_threadpool(registry.warm_up)
        batchers = {
            name: Batcher(name, s.engine.run, executor, max_batch=settings.max_batch,
                          max_delay_ms=settings.max_delay_ms, max_queue=settings.max_queue, metrics=metrics)
            for name, s in registry.specialists.items()
        }
        for b in batchers.values():
            b.start()
        state["batchers"] = batchers
        log.info("ready: %d specialists (%s)", len(registry.specialists), ", ".join(registry.specialists))
        yield
        for b in batchers.values():
            await b.stop()
        executor.shutdown(wait=True)

    app = FastAPI(title="mapex-serve", version="0.1.0", lifespan=lifespan,
                  description="Routes each uploaded GeoTIFF by its band metadata to the matching MAPEX specialist.")

    @app.exception_handler(MapexError)
    async def mapex_error(_request: Request, error: MapexError) -> JSONResponse:
        code = status_of(error)
        headers = {"Retry-After": "1"} if code == 503 else None
        return JSONResponse({"error": type(error).__name__, "detail": str(error)}, status_code=code, headers=headers)

    def registry() -> Registry:
        if state["registry"] is None or not state["registry"].ready:
            raise HTTPException(503, "the service is starting: engines are warming up", headers={"Retry-After": "5"})
        return state["registry"]

    def authorised(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {settings.api_key.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(401, "send the API key as 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        reg = state["registry"]
        ready = reg is not None and reg.ready
        return JSONResponse({"ready": ready, "specialists": sorted(reg.specialists) if reg else []},
                            status_code=200 if ready else 503)

    @app.get("/v2/health/live", tags=["open inference protocol"])
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["open inference protocol"])
    async def v2_ready() -> JSONResponse:
        reg = state["registry"]
        ready = reg is not None and reg.ready
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/models", tags=["models"])
    async def models(reg: Annotated[Registry, Depends(registry)]) -> dict[str, Any]:
        return {
            "specialists": {n: {"version": s.version, "provider": s.engine.provider,
                                "manifest": s.manifest.model_dump(mode="json")} for n, s in reg.specialists.items()},
            "refused": [{"entry": str(r.entry), "reason": r.reason} for r in reg.refused],
            "tasks": reg.tasks(),
        }

    def specialist(reg: Registry, name: str) -> Any:
        if name not in reg.specialists:
            raise UnknownModelError(f"no model {name!r}; served: {', '.join(sorted(reg.specialists)) or 'none'}")
        return reg.specialists[name]

    @app.get("/v2/models/{name}", tags=["open inference protocol"])
    async def v2_model(name: str, reg: Annotated[Registry, Depends(registry)]) -> dict[str, Any]:
        m = specialist(reg, name).manifest
        return {"name": m.name, "versions": [str(m.version)], "platform": "onnxruntime_onnx",
                "inputs": [{"name": m.input.name, "datatype": "FP32", "shape": m.input.shape}],
                "outputs": [{"name": m.output.name, "datatype": "FP32", "shape": m.output.shape}]}

    @app.get("/v2/models/{name}/ready", tags=["open inference protocol"])
    async def v2_model_ready(name: str, reg: Annotated[Registry, Depends(registry)]) -> dict[str, Any]:
        specialist(reg, name)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer", tags=["open inference protocol"], dependencies=[Depends(authorised)])
    async def v2_infer(name: str, body: InferRequest, reg: Annotated[Registry, Depends(registry)]) -> dict[str, Any]:
        s = specialist(reg, name)
        if len(body.inputs) != 1:
            raise HTTPException(422, f"send exactly one input tensor named {s.manifest.input.name!r}")
        tensor = body.inputs[0]
        expected = s.manifest.input.shape[1:]
        if tensor.shape[1:] != expected or np.prod(tensor.shape) != len(tensor.data):
            raise HTTPException(422, f"input shape {tensor.shape} with {len(tensor.data)} values; expected "
                                     f"[N, {', '.join(map(str, expected))}] and N*{int(np.prod(expected))} values")
        x = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
        out = await state["batchers"][name].submit(x)
        return {"model_name": name, "model_version": str(s.version),
                "outputs": [{"name": s.manifest.output.name, "datatype": "FP32", "shape": list(out.shape),
                             "data": out.ravel().tolist()}]}

    @app.get("/metrics", tags=["health"])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _respond(request: Request, manifests: list[Any], bands: str | None, modality: str | None,
                       format: str | None, overrides: UnitOverrides) -> Response:
        """Upload -> routed prediction -> GeoTIFF or JSON: everything MAPEX_REQUEST_TIMEOUT_S bounds."""
        files = await read_upload(request, int(settings.max_upload_mb * 2**20))
        result = await predict(files, manifests, state["batchers"], bands=bands.split(",") if bands else None,
                               modality=modality, max_pixels=settings.max_pixels, max_batch=settings.max_batch,
                               overrides=overrides)
        name = result.route.manifest.name
        if format is None:  # masks default to GeoTIFF, classes to JSON, unless Accept says otherwise
            accept = request.headers.get("accept", "")
            wants_mask_tiff = result.mask is not None and "application/json" not in accept
            format = "geotiff" if "image/tiff" in accept or wants_mask_tiff else "json"
        headers = {"X-Mapex-Specialist": name, "X-Mapex-Version": str(result.route.manifest.version),
                   "X-Mapex-Bands": ",".join(result.route.bands),
                   "X-Mapex-Inputs": json.dumps(inputs_summary(result), ensure_ascii=True, separators=(",", ":"))}
        if format == "geotiff":
            return Response(await run_in_threadpool(as_geotiff, result), media_type="image/tiff", headers=headers)
        return JSONResponse(as_json(result, state["registry"].specialists[name].engine.provider), headers=headers)

    @app.post("/predict/{task}", tags=["predict"], dependencies=[Depends(authorised)],
              responses={200: {"content": {"image/tiff": {}, "application/json": {}}}})
    async def predict_task(
        task: str,
        request: Request,
        reg: Annotated[Registry, Depends(registry)],
        bands: Annotated[str | None, Query(description="names of the bands in order, over all files, e.g. "
                                                       "red,green,blue; '-' skips a band")] = None,
        modality: Annotated[str | None, Query(description="force the specialist of this modality, e.g. SWIR")] = None,
        format: Annotated[Literal["json", "geotiff"] | None, Query(description="else by the Accept header")] = None,
        units: Annotated[str | None, Query(description="unit of the values: dB, linear, amplitude, reflectance, m, ft; "
                                                       "for every band or per band (VV:linear,VH:linear)")] = None,
        scale: Annotated[str | None, Query(description="physical = stored x scale + offset, e.g. 0.0001 "
                                                       "(or per band: B04:0.0001)")] = None,
        offset: Annotated[str | None, Query(description="added after scale, e.g. -0.1 for Sentinel-2 L2A "
                                                        "baseline >= 04.00")] = None,
    ) -> Response:
        started = time.perf_counter()
        name, status = "-", 500
        try:
            manifests = [s.manifest for s in reg.for_task(task)]
            if not manifests:
                raise UnknownTaskError(f"no specialist does task {task!r}; tasks served: {', '.join(reg.tasks()) or 'none'}")
            overrides = UnitOverrides.parse(units, scale, offset)
            try:
                async with asyncio.timeout(settings.request_timeout_s):  # upload, tiles and encoding
                    response = await _respond(request, manifests, bands, modality, format, overrides)
            except TimeoutError:
                raise RequestTimeoutError(f"the request took longer than {settings.request_timeout_s:g} s "
                                          f"(MAPEX_REQUEST_TIMEOUT_S); send a smaller scene or retry later") from None
            name, status = response.headers["x-mapex-specialist"], 200
            return response
        except MapexError as e:
            status = status_of(e)
            raise
        except HTTPException as e:
            status = e.status_code
            raise
        finally:
            metrics.requests.labels(task, name, str(status)).inc()
            metrics.request_seconds.labels(task).observe(time.perf_counter() - started)

    return app
